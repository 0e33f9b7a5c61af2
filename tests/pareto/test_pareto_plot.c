/* test_pareto_plot.c: the Pareto plots (src/pareto/plot.c) of a hand-made results table.
 *  - SVG: the baseline, frontier and dominated points with their colours, one frontier line;
 *  - PNG (builds with cairo): decoded again with cairo, 960x640, not blank, frontier-coloured
 *    pixels; each SVG point has its colour at the same place in the PNG, the frontier line runs
 *    between its points, the title is drawn; a label with invalid UTF-8 still draws; written
 *    atomically (no temp file left) and an unwritable path is an error naming it;
 *  - builds without cairo: tl_pareto_png fails naming cairo and writes nothing, and the test
 *    reports itself skipped (exit 77). */
#define _GNU_SOURCE
#include "../testutil.h"
#include "../../src/pareto/pareto.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef TL_HAVE_CAIRO
#include <cairo.h>
#endif

#define RED 0xd62728u  /* frontier */
#define BLUE 0x1f77b4u /* baseline */
#define GREY 0x999999u /* dominated */

typedef struct {
    double x, y;
    unsigned rgb;
} point;

/* the SVG's <circle> elements; returns how many */
static int svg_points(const char *svg, point *pts, int cap) {
    int n = 0;
    for (const char *c = strstr(svg, "<circle "); c && n < cap; c = strstr(c + 1, "<circle ")) {
        double r;
        if (sscanf(c, "<circle cx=\"%lf\" cy=\"%lf\" r=\"%lf\" fill=\"#%x\"", &pts[n].x, &pts[n].y, &r, &pts[n].rgb) == 4) n++;
    }
    return n;
}

/* baseline f16; k8v8 and k4v4 on the frontier; k4v4 chunk 64 dominated (more memory, worse);
 * k2v2 on the frontier with a label that is not UTF-8 */
static int write_results(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    static const struct {
        const char *id, *label, *kv;
        int chunk;
        double mem, ppl, lo, hi;
    } c[5] = {
        {"w=base kv=f16 chunk=256", "Base f16", "f16", 256, 300e6, 10.0, 0, 0},
        {"w=base kv=k8v8 chunk=256", "Base k8v8", "k8v8", 256, 250e6, 10.02, 0.995, 1.01},
        {"w=base kv=k4v4 chunk=256", "Base k4v4", "k4v4", 256, 200e6, 10.3, 1.02, 1.04},
        {"w=base kv=k4v4 chunk=64", "Base k4v4 c64", "k4v4", 64, 220e6, 10.5, 1.04, 1.06},
        {"w=base kv=k2v2 chunk=256", "Base k2v2 \xff\xfe", "k2v2", 256, 120e6, 11.0, 1.09, 1.11},
    };
    for (int i = 0; i < 5; i++) {
        fprintf(f, "{\"cmd\":\"pareto\",\"config\":{\"id\":\"%s\",\"label\":\"%s\",\"weights\":\"base\",\"kv\":\"%s\","
                   "\"kv_layer\":\"\",\"chunk\":%d,\"model\":\"m.gguf\",\"ctx\":1024},\"metric\":\"ppl\",\"status\":\"ok\","
                   "\"value\":%g,\"n\":1000,\"mem\":{\"weights\":1,\"kv\":1,\"act\":1,\"logits\":0,\"total\":%g},"
                   "\"proj\":{\"ctx\":32768,\"kv\":1,\"total\":%g}",
                c[i].id, c[i].label, c[i].kv, c[i].chunk, c[i].ppl, c[i].mem, 20 * c[i].mem);
        if (i) fprintf(f, ",\"ppl_ratio_ci\":{\"value\":%g,\"lo\":%g,\"hi\":%g,\"n\":1000}", c[i].ppl / 10, c[i].lo, c[i].hi);
        fprintf(f, "}\n");
    }
    return fclose(f);
}

/* files in dir whose name holds needle */
static int count_files(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, needle) != NULL;
    if (d) closedir(d);
    return n;
}

#ifdef TL_HAVE_CAIRO
typedef struct {
    const uint32_t *p;
    int w, h, stride; /* stride in pixels */
} image;

static unsigned pixel(const image *im, int x, int y) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h) return 0xffffffu;
    return im->p[(size_t)y * im->stride + x] & 0xffffffu;
}

/* a pixel within d of (x, y) that is mostly red: the frontier line, antialiased */
static bool reddish_near(const image *im, double x, double y, int d) {
    for (int dy = -d; dy <= d; dy++)
        for (int dx = -d; dx <= d; dx++) {
            const unsigned c = pixel(im, (int)lround(x) + dx, (int)lround(y) + dy);
            if ((c >> 16) > 170 && (c >> 8 & 255) < 110 && (c & 255) < 110) return true;
        }
    return false;
}

static void check_png(const char *path, const point *pts, int n_pts) {
    cairo_surface_t *s = cairo_image_surface_create_from_png(path);
    CHECKF(cairo_surface_status(s) == CAIRO_STATUS_SUCCESS, "%s: %s", path, cairo_status_to_string(cairo_surface_status(s)));
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
        cairo_surface_destroy(s);
        return;
    }
    cairo_surface_flush(s);
    const image im = {(const uint32_t *)cairo_image_surface_get_data(s), cairo_image_surface_get_width(s),
                      cairo_image_surface_get_height(s), cairo_image_surface_get_stride(s) / 4};
    CHECKF(im.w == 960 && im.h == 640, "%dx%d", im.w, im.h);
    CHECK(cairo_image_surface_get_format(s) == CAIRO_FORMAT_RGB24 || cairo_image_surface_get_format(s) == CAIRO_FORMAT_ARGB32);
    /* not blank: white background, but a fair part drawn; frontier and baseline colours present */
    long white = 0, red = 0, blue = 0, dark = 0, title_dark = 0;
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++) {
            const unsigned c = pixel(&im, x, y);
            white += c == 0xffffffu;
            red += c == RED;
            blue += c == BLUE;
            const bool d = (c >> 16) < 100 && (c >> 8 & 255) < 100 && (c & 255) < 100;
            dark += d;
            title_dark += d && y < 40;
        }
    const long all = (long)im.w * im.h;
    CHECKF(white > all / 2 && white < all - 10000, "%ld of %ld pixels white", white, all);
    CHECKF(red >= 3 * 50, "%ld frontier-coloured pixels", red); /* three frontier dots of radius 5 at least */
    CHECKF(blue >= 50, "%ld baseline-coloured pixels", blue);
    CHECKF(dark > 2000 && title_dark > 200, "%ld dark pixels (text, axes), %ld in the title", dark, title_dark);
    /* the SVG's points at the same places in the PNG, in the same colours: the pixels at the
     * centre and 2 pixels from it each way (the dots' radius is 4 or 5) */
    static const int off[5][2] = {{0, 0}, {2, 0}, {-2, 0}, {0, 2}, {0, -2}};
    int front[8], nf = 0;
    for (int i = 0; i < n_pts; i++) {
        for (int k = 0; k < 5; k++) {
            const unsigned c = pixel(&im, (int)floor(pts[i].x) + off[k][0], (int)floor(pts[i].y) + off[k][1]);
            CHECKF(c == pts[i].rgb, "point %d at (%.1f, %.1f) %+d,%+d: PNG #%06x, SVG #%06x", i, pts[i].x, pts[i].y, off[k][0],
                   off[k][1], c, pts[i].rgb);
        }
        if (pts[i].rgb == RED && nf < 8) front[nf++] = i;
    }
    /* the frontier line: red halfway between consecutive frontier points (by memory = x) */
    for (int i = 1; i < nf; i++)
        for (int j = i; j > 0 && pts[front[j]].x < pts[front[j - 1]].x; j--) {
            const int t = front[j];
            front[j] = front[j - 1];
            front[j - 1] = t;
        }
    for (int i = 1; i < nf; i++) {
        const point *a = &pts[front[i - 1]], *b = &pts[front[i]];
        CHECKF(reddish_near(&im, (a->x + b->x) / 2, (a->y + b->y) / 2, 1), "no frontier line between (%.1f, %.1f) and (%.1f, %.1f)",
               a->x, a->y, b->x, b->y);
    }
    cairo_surface_destroy(s);
}
#endif

int main(void) {
    char dir[] = "/tmp/tl_pareto_plot_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char res[600], png[2][600], bad[700];
    snprintf(res, sizeof res, "%s/results.jsonl", dir);
    snprintf(png[0], sizeof png[0], "%s/frontier.png", dir);
    snprintf(png[1], sizeof png[1], "%s/frontier_target.png", dir);
    snprintf(bad, sizeof bad, "%s/no-such-dir/frontier.png", dir);
    CHECK(write_results(res) == 0);
    tl_pareto_table t;
    tl_error err = {{0}};
    const char *paths[1] = {res};
    CHECKF(tl_pareto_load(&t, paths, 1, NULL, false, &err) == 0, "%s", err.msg);
    CHECKF(t.n == 5 && t.base == 0 && t.target_ctx == 32768, "%d rows, baseline %d, target %d", t.n, t.base, t.target_ctx);

    /* memory at the evaluated context, then projected */
    for (int which = 0; which < 2; which++) {
        /* SVG: 5 points (1 blue, 3 red, 1 grey), one frontier line */
        char *svg = tl_pareto_svg(&t, "KV Pareto: m.gguf", which);
        point pts[16];
        const int n_pts = svg_points(svg, pts, 16);
        int n_red = 0, n_blue = 0, n_grey = 0;
        for (int i = 0; i < n_pts; i++) n_red += pts[i].rgb == RED, n_blue += pts[i].rgb == BLUE, n_grey += pts[i].rgb == GREY;
        CHECKF(n_pts == 5 && n_red == 3 && n_blue == 1 && n_grey == 1, "axis %d: %d points: %d red, %d blue, %d grey", which,
               n_pts, n_red, n_blue, n_grey);
        CHECK(strstr(svg, "<polyline") && !strstr(strstr(svg, "<polyline") + 1, "<polyline"));
        CHECK(strstr(svg, ">KV Pareto: m.gguf</text>") && strstr(svg, ">Base k8v8</text>"));
        CHECK(strstr(svg, which ? "projected to 32768 tokens</text>" : "at 1024 tokens: weights + KV + activations</text>"));
#ifdef TL_HAVE_CAIRO
        CHECK(tl_pareto_have_png());
        CHECKF(tl_pareto_png(&t, "KV Pareto: m.gguf", which, png[which], &err) == 0, "%s", err.msg);
        check_png(png[which], pts, n_pts);
        /* written again over the first: still whole */
        CHECKF(tl_pareto_png(&t, "KV Pareto: m.gguf", which, png[which], &err) == 0, "%s", err.msg);
        check_png(png[which], pts, n_pts);
#endif
        free(svg);
    }
#ifdef TL_HAVE_CAIRO
    CHECKF(count_files(dir, ".tmp.") == 0, "temp files left in %s", dir);
    err.msg[0] = 0;
    CHECK(tl_pareto_png(&t, "x", 0, bad, &err) == -1 && strstr(err.msg, "no-such-dir"));
#else
    CHECK(!tl_pareto_have_png());
    CHECK(tl_pareto_png(&t, "x", 0, png[0], &err) == -1 && strstr(err.msg, "cairo"));
    CHECK(access(png[0], F_OK) != 0 && count_files(dir, ".tmp.") == 0);
    tl_test_skip("PNG plots need cairo (this build has none): only the SVG is checked");
#endif
    tl_pareto_table_free(&t);
    if (tl_test_failed == 0) {
        unlink(png[0]);
        unlink(png[1]);
        unlink(res);
        rmdir(dir);
    } else {
        fprintf(stderr, "kept %s for inspection\n", dir);
    }
    return tl_test_done();
}
