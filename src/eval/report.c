/* report.c: see report.h. */
#define _GNU_SOURCE
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void tl_progress_init(tl_progress *p, const char *label, int64_t total_units, int n_items, bool enabled) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    p->label = label;
    p->total = total_units > 0 ? total_units : 1;
    p->n_items = n_items;
    p->enabled = enabled;
    p->tty = isatty(2);
    p->t0 = tl_time_s();
    p->last_pct = -1;
}

static void fmt_time(char *b, size_t n, double s) {
    if (s < 100) snprintf(b, n, "%.0fs", s);
    else if (s < 6000) snprintf(b, n, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
    else snprintf(b, n, "%.0fh%02.0fm", floor(s / 3600), fmod(s / 60, 60));
}

static void print_bar(tl_progress *p, bool final) {
    const double el = tl_time_s() - p->t0, f = (double)p->done / (double)p->total;
    const int width = 30, fill = (int)(f * width + 0.5);
    char bar[64], e[32], eta[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fmt_time(e, sizeof e, el);
    fmt_time(eta, sizeof eta, f > 0 ? el / f * (1 - f) : 0);
    fprintf(stderr, "%s%s [%s] %3.0f%% %d/%d  %s elapsed, ETA %s%s", p->tty ? "\r" : "", p->label ? p->label : "",
            bar, f * 100, p->items_done, p->n_items, e, final ? "-" : eta, p->tty && !final ? "   " : "\n");
    fflush(stderr);
}

void tl_progress_add(tl_progress *p, int64_t units, int items) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->done += units;
    p->items_done += items;
    if (p->enabled) {
        /* on a terminal redraw every time; in a log, one line per 10% */
        const int pct = (int)(100.0 * p->done / p->total);
        if (p->tty || pct / 10 != p->last_pct / 10) print_bar(p, false);
        p->last_pct = pct;
    }
    pthread_mutex_unlock(&p->mu);
}

void tl_progress_done(tl_progress *p) {
    if (!p) return;
    if (p->enabled && p->tty) {
        print_bar(p, true);
    }
    pthread_mutex_destroy(&p->mu);
}

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

int tl_result_append(const char *path, const char *cmd, const cJSON *config, const char *metric, double value,
                     int64_t n, double seconds, const cJSON *extra, tl_error *err) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", cmd);
    cJSON_AddItemToObject(o, "config", config ? cJSON_Duplicate(config, 1) : cJSON_CreateObject());
    cJSON_AddStringToObject(o, "metric", metric);
    cJSON_AddItemToObject(o, "value", num_or_null(value));
    cJSON_AddNumberToObject(o, "n", (double)n);
    cJSON_AddNumberToObject(o, "seconds", seconds);
    if (extra)
        for (const cJSON *c = extra->child; c; c = c->next) cJSON_AddItemToObject(o, c->string, cJSON_Duplicate(c, 1));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    const size_t len = strlen(line);
    line = tl_xrealloc(line, len + 2);
    line[len] = '\n';
    int rc = 0;
    /* one write() on an O_APPEND descriptor: concurrent runs appending to the same file do not
     * interleave their lines */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) rc = tl_fail(err, "%s: %s", path, strerror(errno));
    else {
        if (write(fd, line, len + 1) != (ssize_t)(len + 1)) rc = tl_fail(err, "%s: write failed: %s", path, strerror(errno));
        if (close(fd) && !rc) rc = tl_fail(err, "%s: %s", path, strerror(errno));
    }
    free(line);
    return rc;
}

static void add_lo_hi(cJSON *o, tl_interval ci) {
    cJSON_AddItemToObject(o, "lo", num_or_null(ci.lo));
    cJSON_AddItemToObject(o, "hi", num_or_null(ci.hi));
}

void tl_json_add_interval(cJSON *o, tl_interval ci) {
    cJSON_AddNumberToObject(o, "n", (double)ci.n);
    add_lo_hi(o, ci);
}

int tl_result_append_ci(const char *path, const char *cmd, const cJSON *config, const char *metric, tl_interval ci,
                        double seconds, const cJSON *extra, tl_error *err) {
    cJSON *x = extra ? cJSON_Duplicate(extra, 1) : cJSON_CreateObject();
    add_lo_hi(x, ci);
    const int rc = tl_result_append(path, cmd, config, metric, ci.value, ci.n, seconds, x, err);
    cJSON_Delete(x);
    return rc;
}

const char *tl_interval_str(tl_interval ci, int prec, char *buf, size_t cap) {
    snprintf(buf, cap, "%.*f [%.*f, %.*f]", prec, ci.value, prec, ci.lo, prec, ci.hi);
    return buf;
}

char *tl_svg_heatmap(const char *title, const char *xlabel, const char *const *xs, int nx, const char *ylabel,
                     const char *const *ys, int ny, const double *values) {
    const int cw = 70, ch = 36, left = 90, top = 50, W = left + nx * cw + 20, H = top + ny * ch + 60;
    tl_strbuf b = {0};
    tl_strbuf_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                  "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
              W, H);
    tl_strbuf_printf(&b, "<text x=\"%d\" y=\"24\" font-size=\"15\" font-weight=\"bold\">", left);
    tl_strbuf_xml(&b, title);
    tl_strbuf_printf(&b, "</text>\n");
    for (int y = 0; y < ny; y++) {
        tl_strbuf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", left - 8, top + y * ch + ch / 2 + 4);
        tl_strbuf_xml(&b, ys[y]);
        tl_strbuf_printf(&b, "</text>\n");
        for (int x = 0; x < nx; x++) {
            const double v = values[y * nx + x];
            char fill[16];
            if (isnan(v)) snprintf(fill, sizeof fill, "#dddddd");
            else {
                /* red -> yellow -> green */
                const double t = v < 0 ? 0 : v > 1 ? 1 : v;
                const int r = t < 0.5 ? 220 : (int)(220 - (t - 0.5) * 2 * 170);
                const int g = t < 0.5 ? (int)(60 + t * 2 * 150) : (int)(210 - (t - 0.5) * 2 * 30);
                snprintf(fill, sizeof fill, "#%02x%02x%02x", r, g, 70);
            }
            tl_strbuf_printf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"white\"/>\n",
                      left + x * cw, top + y * ch, cw, ch, fill);
            if (!isnan(v))
                tl_strbuf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2f</text>\n", left + x * cw + cw / 2,
                          top + y * ch + ch / 2 + 4, v);
        }
    }
    for (int x = 0; x < nx; x++) {
        tl_strbuf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", left + x * cw + cw / 2, top + ny * ch + 18);
        tl_strbuf_xml(&b, xs[x]);
        tl_strbuf_printf(&b, "</text>\n");
    }
    tl_strbuf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", left + nx * cw / 2, top + ny * ch + 42);
    tl_strbuf_xml(&b, xlabel);
    tl_strbuf_printf(&b, "</text>\n<text x=\"14\" y=\"%d\" transform=\"rotate(-90 14 %d)\" text-anchor=\"middle\">",
              top + ny * ch / 2, top + ny * ch / 2);
    tl_strbuf_xml(&b, ylabel);
    tl_strbuf_printf(&b, "</text>\n</svg>\n");
    return b.p;
}

