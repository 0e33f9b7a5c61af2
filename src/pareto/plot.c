/* plot.c: memory vs accuracy scatter with the frontier line, as SVG and as PNG.
 * The PNG is drawn on an RGB canvas (lines, dots, a 5x7 bitmap font) and encoded here: PNG
 * chunks with CRC-32, a zlib stream of fixed-Huffman deflate blocks whose only matches are
 * runs (distance 1) after the Sub filter -- plain backgrounds compress to almost nothing. */
#include "pareto.h"
#include "../eval/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define W 960
#define H 640
#define ML 90
#define MR 30
#define MT 50
#define MB 70

typedef struct {
    double x0, x1, y0, y1; /* data ranges: MiB, accuracy % */
    int n;
    int *order;            /* frontier indices by memory */
    int n_front;
    int which;             /* memory axis: 0 measured, 1 projected to target ctx, 2 projected to another model */
    int *front;            /* frontier flags on that axis */
    double *mem;           /* MiB on that axis (NaN = none) */
    int n_boxes;           /* placed labels (collision avoidance) */
    double box[256][4];
} frame;

static bool shown(const frame *f, const tl_pareto_row *r, int i) {
    return !r->failed && !isnan(r->acc) && !isnan(f->mem[i]);
}
static double clamp_acc(const frame *f, double acc) { return fmax(acc, f->y0); }

/* a label position near (x, y) that overlaps no label placed before */
static void place_label(frame *f, double x, double y, double w, double *lx, double *ly) {
    static const double dy[6] = {-6, 14, -18, 26, -30, 38};
    for (int k = 0; k < 6; k++) {
        const double bx = x + 7, by = y + dy[k];
        bool hit = false;
        for (int j = 0; j < f->n_boxes && !hit; j++)
            hit = bx < f->box[j][0] + f->box[j][2] && f->box[j][0] < bx + w && by - 9 < f->box[j][1] && f->box[j][1] - 9 < by;
        if (!hit || k == 5) {
            *lx = bx;
            *ly = by;
            if (f->n_boxes < 256) {
                f->box[f->n_boxes][0] = bx, f->box[f->n_boxes][1] = by, f->box[f->n_boxes][2] = w;
                f->n_boxes++;
            }
            return;
        }
    }
}

static double nice_step(double range) {
    const double raw = range / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

static void make_frame(const tl_pareto_table *t, int which, frame *f) {
    memset(f, 0, sizeof *f);
    f->which = which;
    f->mem = tl_xcalloc((size_t)t->n + 1, sizeof *f->mem);
    f->front = tl_xcalloc((size_t)t->n + 1, sizeof *f->front);
    tl_pareto_point *p = tl_xcalloc((size_t)t->n + 1, sizeof *p);
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        const double m = which == 0 ? r->mem_total : which == 1 ? r->proj_total : r->proj2_total;
        f->mem[i] = m / 1048576.0;
        p[i] = (tl_pareto_point){m, r->acc_lo, r->decode_tps, r->failed || isnan(m)}; /* pessimistic end */
    }
    tl_pareto_frontier(p, t->n, false, f->front);
    free(p);
    double xmax = 0, ymin = INFINITY, ymax = -INFINITY, fmin_acc = INFINITY;
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (!shown(f, r, i)) continue;
        xmax = fmax(xmax, f->mem[i]);
        ymin = fmin(ymin, 100 * r->acc);
        ymax = fmax(ymax, 100 * r->acc);
        if (f->front[i] || r->baseline) fmin_acc = fmin(fmin_acc, 100 * r->acc);
    }
    if (!isfinite(ymin)) ymin = 99, ymax = 101, xmax = 1;
    /* far-off points (a collapsed 1-bit cache) would squash the interesting part: the axis
     * covers the frontier, the baseline and everything above 90%; lower points sit on the
     * bottom edge */
    if (isfinite(fmin_acc)) ymin = fmax(ymin, fmin(fmin_acc, 90.0));
    if (ymax - ymin < 0.5) ymin -= 0.25, ymax += 0.25;
    const double pad = (ymax - ymin) * 0.08;
    f->x0 = 0;
    f->x1 = xmax * 1.08;
    f->y0 = ymin - pad;
    f->y1 = ymax + pad;
    f->order = tl_xcalloc((size_t)t->n + 1, sizeof *f->order);
    for (int i = 0; i < t->n; i++)
        if (f->front[i]) f->order[f->n_front++] = i;
    for (int i = 1; i < f->n_front; i++)
        for (int j = i; j > 0 && f->mem[f->order[j]] < f->mem[f->order[j - 1]]; j--) {
            int x = f->order[j];
            f->order[j] = f->order[j - 1];
            f->order[j - 1] = x;
        }
}

static void free_frame(frame *f) {
    free(f->order);
    free(f->front);
    free(f->mem);
}

static const char *axis_name(const tl_pareto_table *t, int which, char *buf, size_t n) {
    if (which == 0) snprintf(buf, n, "total memory (MiB) at %d tokens: weights + KV + activations", t->ctx);
    else if (which == 1) snprintf(buf, n, "total memory (MiB) projected to %d tokens", t->target_ctx);
    else snprintf(buf, n, "total memory (MiB) of %s at %d tokens (projected)", t->project_to, t->target_ctx);
    return buf;
}

static double px(const frame *f, double mib) { return ML + (mib - f->x0) / (f->x1 - f->x0) * (W - ML - MR); }
static double py(const frame *f, double acc) { return H - MB - (acc - f->y0) / (f->y1 - f->y0) * (H - MT - MB); }

/* ---- SVG ---- */

char *tl_pareto_svg(const tl_pareto_table *t, const char *title, int which) {
    frame f;
    make_frame(t, which, &f);
    char xl[700];
    tl_strbuf b = {0};
    tl_strbuf_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n", W, H);
    tl_strbuf_printf(&b, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n<text x=\"%d\" y=\"28\" font-size=\"17\" text-anchor=\"middle\">",
        W, H, W / 2);
    tl_strbuf_xml(&b, title ? title : "KV Pareto");
    tl_strbuf_printf(&b, "</text>\n");
    /* axes and grid */
    const double xs = nice_step(f.x1 - f.x0), ys = nice_step(f.y1 - f.y0);
    for (double x = ceil(f.x0 / xs) * xs; x <= f.x1; x += xs)
        tl_strbuf_printf(&b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#eee\"/><text x=\"%.1f\" y=\"%d\" font-size=\"12\" "
                "text-anchor=\"middle\">%g</text>\n", px(&f, x), MT, px(&f, x), H - MB, px(&f, x), H - MB + 18, x);
    for (double y = ceil(f.y0 / ys) * ys; y <= f.y1; y += ys)
        tl_strbuf_printf(&b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#eee\"/><text x=\"%d\" y=\"%.1f\" font-size=\"12\" "
                "text-anchor=\"end\">%g</text>\n", ML, py(&f, y), W - MR, py(&f, y), ML - 6, py(&f, y) + 4, y);
    tl_strbuf_printf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", ML, MT, W - ML - MR, H - MT - MB);
    tl_strbuf_printf(&b, "<text x=\"%d\" y=\"%d\" font-size=\"14\" text-anchor=\"middle\">", (ML + W - MR) / 2, H - 25);
    tl_strbuf_xml(&b, axis_name(t, which, xl, sizeof xl));
    tl_strbuf_printf(&b, "</text>\n");
    tl_strbuf_printf(&b, "<text transform=\"translate(22,%d) rotate(-90)\" font-size=\"14\" text-anchor=\"middle\">accuracy relative to "
            "baseline (%%)</text>\n", (MT + H - MB) / 2);
    if (t->base >= 0)
        tl_strbuf_printf(&b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>\n", ML,
            py(&f, 100), W - MR, py(&f, 100));
    /* frontier line */
    if (f.n_front > 1) {
        tl_strbuf_printf(&b, "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"");
        for (int k = 0; k < f.n_front; k++) {
            const tl_pareto_row *r = &t->rows[f.order[k]];
            tl_strbuf_printf(&b, "%.1f,%.1f ", px(&f, f.mem[f.order[k]]), py(&f, clamp_acc(&f, 100 * r->acc)));
        }
        tl_strbuf_printf(&b, "\"/>\n");
    }
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (!shown(&f, r, i)) continue;
        const bool fr = f.front[i];
        const double x = px(&f, f.mem[i]), y = py(&f, clamp_acc(&f, 100 * r->acc));
        const char *col = r->baseline ? "#1f77b4" : fr ? "#d62728" : "#999";
        if (!r->baseline && !isnan(r->acc_lo) && !isnan(r->acc_hi)) /* the 95% interval as an error bar */
            tl_strbuf_printf(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n", x,
                             py(&f, clamp_acc(&f, 100 * r->acc_lo)), x, py(&f, clamp_acc(&f, 100 * r->acc_hi)), col);
        tl_strbuf_printf(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%d\" fill=\"%s\"><title>", x, y, fr || r->baseline ? 5 : 4, col);
        tl_strbuf_xml(&b, r->label);
        tl_strbuf_printf(&b, ": %.1f MiB, %.2f%%</title></circle>\n", f.mem[i], 100 * r->acc);
        if (fr || r->baseline) {
            double lx, ly;
            place_label(&f, x, y, strlen(r->label) * 5.5, &lx, &ly);
            tl_strbuf_printf(&b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"%s\">", lx, ly, col);
            tl_strbuf_xml(&b, r->label);
            tl_strbuf_printf(&b, "</text>\n");
        }
    }
    tl_strbuf_printf(&b, "</svg>\n");
    free_frame(&f);
    return b.p;
}

/* ---- raster ---- */
typedef struct {
    unsigned char *p; /* W*H*3 */
} canvas;

static void dot(canvas *c, int x, int y, const unsigned char *rgb) {
    if (x < 0 || y < 0 || x >= W || y >= H) return;
    memcpy(c->p + ((size_t)y * W + x) * 3, rgb, 3);
}

static void line(canvas *c, double x0, double y0, double x1, double y1, const unsigned char *rgb, int thick, int dash) {
    const double len = fmax(fabs(x1 - x0), fabs(y1 - y0));
    const int n = (int)ceil(len) + 1;
    for (int i = 0; i < n; i++) {
        if (dash && (i / dash) % 2) continue;
        const double t = n > 1 ? (double)i / (n - 1) : 0;
        const int x = (int)lround(x0 + t * (x1 - x0)), y = (int)lround(y0 + t * (y1 - y0));
        for (int dy = 0; dy < thick; dy++)
            for (int dx = 0; dx < thick; dx++) dot(c, x + dx, y + dy, rgb);
    }
}

static void disc(canvas *c, double cx, double cy, int r, const unsigned char *rgb) {
    for (int y = -r; y <= r; y++)
        for (int x = -r; x <= r; x++)
            if (x * x + y * y <= r * r) dot(c, (int)lround(cx) + x, (int)lround(cy) + y, rgb);
}

/* 5x7 font, ASCII 32..95 (lower case drawn as upper case), one byte per row, bit 4 = left */
static const unsigned char FONT[64][7] = {
    {0, 0, 0, 0, 0, 0, 0},                 {4, 4, 4, 4, 4, 0, 4},          {10, 10, 0, 0, 0, 0, 0},
    {10, 10, 31, 10, 31, 10, 10},          {4, 15, 20, 14, 5, 30, 4},      {24, 25, 2, 4, 8, 19, 3},
    {12, 18, 20, 8, 21, 18, 13},           {4, 4, 0, 0, 0, 0, 0},          {2, 4, 8, 8, 8, 4, 2},
    {8, 4, 2, 2, 2, 4, 8},                 {0, 4, 21, 14, 21, 4, 0},       {0, 4, 4, 31, 4, 4, 0},
    {0, 0, 0, 0, 12, 4, 8},                {0, 0, 0, 31, 0, 0, 0},         {0, 0, 0, 0, 0, 12, 12},
    {0, 1, 2, 4, 8, 16, 0},                {14, 17, 19, 21, 25, 17, 14},   {4, 12, 4, 4, 4, 4, 14},
    {14, 17, 1, 2, 4, 8, 31},              {31, 2, 4, 2, 1, 17, 14},       {2, 6, 10, 18, 31, 2, 2},
    {31, 16, 30, 1, 1, 17, 14},            {6, 8, 16, 30, 17, 17, 14},     {31, 1, 2, 4, 8, 8, 8},
    {14, 17, 17, 14, 17, 17, 14},          {14, 17, 17, 15, 1, 2, 12},     {0, 12, 12, 0, 12, 12, 0},
    {0, 12, 12, 0, 12, 4, 8},              {2, 4, 8, 16, 8, 4, 2},         {0, 0, 31, 0, 31, 0, 0},
    {8, 4, 2, 1, 2, 4, 8},                 {14, 17, 1, 2, 4, 0, 4},        {14, 17, 1, 13, 21, 21, 14},
    {14, 17, 17, 17, 31, 17, 17},          {30, 17, 17, 30, 17, 17, 30},   {14, 17, 16, 16, 16, 17, 14},
    {28, 18, 17, 17, 17, 18, 28},          {31, 16, 16, 30, 16, 16, 31},   {31, 16, 16, 30, 16, 16, 16},
    {14, 17, 16, 23, 17, 17, 15},          {17, 17, 17, 31, 17, 17, 17},   {14, 4, 4, 4, 4, 4, 14},
    {7, 2, 2, 2, 2, 18, 12},               {17, 18, 20, 24, 20, 18, 17},   {16, 16, 16, 16, 16, 16, 31},
    {17, 27, 21, 21, 17, 17, 17},          {17, 17, 25, 21, 19, 17, 17},   {14, 17, 17, 17, 17, 17, 14},
    {30, 17, 17, 30, 16, 16, 16},          {14, 17, 17, 17, 21, 18, 13},   {30, 17, 17, 30, 20, 18, 17},
    {15, 16, 16, 14, 1, 1, 30},            {31, 4, 4, 4, 4, 4, 4},         {17, 17, 17, 17, 17, 17, 14},
    {17, 17, 17, 17, 17, 10, 4},           {17, 17, 17, 21, 21, 21, 10},   {17, 17, 10, 4, 10, 17, 17},
    {17, 17, 17, 10, 4, 4, 4},             {31, 1, 2, 4, 8, 16, 31},       {14, 8, 8, 8, 8, 8, 14},
    {0, 16, 8, 4, 2, 1, 0},                {14, 2, 2, 2, 2, 2, 14},        {4, 10, 17, 0, 0, 0, 0},
    {0, 0, 0, 0, 0, 0, 31},
};

/* anchor: 0 left, 1 centre, 2 right */
static void text(canvas *c, double x, double y, const char *s, int scale, int anchor, const unsigned char *rgb) {
    const int w = (int)strlen(s) * 6 * scale;
    int x0 = (int)lround(x) - (anchor == 1 ? w / 2 : anchor == 2 ? w : 0), y0 = (int)lround(y) - 7 * scale;
    for (; *s; s++, x0 += 6 * scale) {
        int ch = (unsigned char)*s;
        if (ch >= 'a' && ch <= 'z') ch -= 32;
        if (ch == '{' || ch == '|' || ch == '}' || ch == '~') ch = '-';
        if (ch < 32 || ch > 95) ch = '?';
        const unsigned char *g = FONT[ch - 32];
        for (int r = 0; r < 7; r++)
            for (int b = 0; b < 5; b++)
                if (g[r] >> (4 - b) & 1)
                    for (int dy = 0; dy < scale; dy++)
                        for (int dx = 0; dx < scale; dx++) dot(c, x0 + b * scale + dx, y0 + r * scale + dy, rgb);
    }
}

/* ---- PNG encoding ---- */
typedef struct {
    unsigned char *p;
    size_t n, cap;
    uint32_t bitbuf;
    int nbits;
} out_t;

static void ob(out_t *o, unsigned char b) {
    if (o->n == o->cap) o->p = tl_xrealloc(o->p, o->cap = o->cap ? 2 * o->cap : 1 << 16);
    o->p[o->n++] = b;
}
static void o32(out_t *o, uint32_t v) {
    for (int i = 3; i >= 0; i--) ob(o, (unsigned char)(v >> (8 * i)));
}
/* deflate bits, LSB first */
static void bits(out_t *o, uint32_t v, int n) {
    o->bitbuf |= v << o->nbits;
    o->nbits += n;
    while (o->nbits >= 8) {
        ob(o, (unsigned char)o->bitbuf);
        o->bitbuf >>= 8;
        o->nbits -= 8;
    }
}
/* a Huffman code is sent most significant bit first */
static void huff(out_t *o, uint32_t code, int len) {
    uint32_t r = 0;
    for (int i = 0; i < len; i++) r |= ((code >> i) & 1) << (len - 1 - i);
    bits(o, r, len);
}
static void lit(out_t *o, int v) {
    if (v < 144) huff(o, 0x30 + (uint32_t)v, 8);
    else if (v < 256) huff(o, 0x190 + (uint32_t)(v - 144), 9);
    else if (v < 280) huff(o, (uint32_t)(v - 256), 7);
    else huff(o, 0xC0 + (uint32_t)(v - 280), 8);
}
static void match_len(out_t *o, int len) {
    static const int base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const int extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    int k = 28;
    while (base[k] > len) k--;
    lit(o, 257 + k);
    if (extra[k]) bits(o, (uint32_t)(len - base[k]), extra[k]);
    huff(o, 0, 5); /* distance code 0 = distance 1 */
}

static uint32_t crc_table_entry(uint32_t c) {
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    return c;
}
static uint32_t crc32_of(const unsigned char *p, size_t n) {
    uint32_t tab[256];
    for (uint32_t i = 0; i < 256; i++) tab[i] = crc_table_entry(i);
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = tab[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void chunk(out_t *o, const char *type, const unsigned char *data, size_t n) {
    o32(o, (uint32_t)n);
    const size_t start = o->n;
    for (int i = 0; i < 4; i++) ob(o, (unsigned char)type[i]);
    for (size_t i = 0; i < n; i++) ob(o, data[i]);
    o32(o, crc32_of(o->p + start, o->n - start));
}

static unsigned char *png_encode(const unsigned char *rgb, int w, int h, size_t *len) {
    /* filtered scanlines: Sub filter (1) */
    const size_t stride = (size_t)w * 3 + 1, raw_n = stride * (size_t)h;
    unsigned char *raw = tl_xmalloc(raw_n);
    for (int y = 0; y < h; y++) {
        unsigned char *r = raw + (size_t)y * stride;
        const unsigned char *s = rgb + (size_t)y * w * 3;
        r[0] = 1;
        for (size_t i = 0; i < (size_t)w * 3; i++) r[1 + i] = (unsigned char)(s[i] - (i >= 3 ? s[i - 3] : 0));
    }
    out_t z = {0};
    ob(&z, 0x78);
    ob(&z, 0x01);
    bits(&z, 1, 1); /* one final block, fixed Huffman */
    bits(&z, 1, 2);
    for (size_t i = 0; i < raw_n;) {
        size_t run = 0;
        if (i > 0)
            while (i + run < raw_n && run < 258 && raw[i + run] == raw[i - 1]) run++;
        if (run >= 3) {
            match_len(&z, (int)run);
            i += run;
        } else {
            lit(&z, raw[i]);
            i++;
        }
    }
    lit(&z, 256);
    if (z.nbits) bits(&z, 0, 8 - z.nbits);
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < raw_n; i++) {
        a = (a + raw[i]) % 65521;
        b = (b + a) % 65521;
    }
    o32(&z, (b << 16) | a);
    free(raw);
    out_t o = {0};
    static const unsigned char sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    for (int i = 0; i < 8; i++) ob(&o, sig[i]);
    unsigned char ihdr[13] = {0};
    for (int i = 0; i < 4; i++) ihdr[i] = (unsigned char)(w >> (24 - 8 * i)), ihdr[4 + i] = (unsigned char)(h >> (24 - 8 * i));
    ihdr[8] = 8; /* bit depth */
    ihdr[9] = 2; /* RGB */
    chunk(&o, "IHDR", ihdr, 13);
    chunk(&o, "IDAT", z.p, z.n);
    chunk(&o, "IEND", NULL, 0);
    free(z.p);
    *len = o.n;
    return o.p;
}

int tl_pareto_png(const tl_pareto_table *t, const char *title, int which, const char *path, tl_error *err) {
    frame f;
    make_frame(t, which, &f);
    canvas c = {tl_xmalloc((size_t)W * H * 3)};
    memset(c.p, 255, (size_t)W * H * 3);
    static const unsigned char black[3] = {40, 40, 40}, grid[3] = {232, 232, 232}, grey[3] = {150, 150, 150},
                               red[3] = {214, 39, 40}, blue[3] = {31, 119, 180};
    const double xs = nice_step(f.x1 - f.x0), ys = nice_step(f.y1 - f.y0);
    char buf[160];
    for (double x = ceil(f.x0 / xs) * xs; x <= f.x1; x += xs) {
        line(&c, px(&f, x), MT, px(&f, x), H - MB, grid, 1, 0);
        snprintf(buf, sizeof buf, "%g", x);
        text(&c, px(&f, x), H - MB + 18, buf, 1, 1, black);
    }
    for (double y = ceil(f.y0 / ys) * ys; y <= f.y1; y += ys) {
        line(&c, ML, py(&f, y), W - MR, py(&f, y), grid, 1, 0);
        snprintf(buf, sizeof buf, "%g", y);
        text(&c, ML - 6, py(&f, y) + 4, buf, 1, 2, black);
    }
    line(&c, ML, MT, W - MR, MT, black, 1, 0);
    line(&c, ML, H - MB, W - MR, H - MB, black, 1, 0);
    line(&c, ML, MT, ML, H - MB, black, 1, 0);
    line(&c, W - MR, MT, W - MR, H - MB, black, 1, 0);
    if (t->base >= 0) line(&c, ML, py(&f, 100), W - MR, py(&f, 100), grey, 1, 4);
    const char *tt = title ? title : "KV PARETO";
    text(&c, W / 2.0, 30, tt, strlen(tt) * 12 > W - 20 ? 1 : 2, 1, black);
    char xl[700];
    text(&c, (ML + W - MR) / 2.0, H - 25, axis_name(t, which, xl, sizeof xl), 1, 1, black);
    text(&c, 8, MT - 12, "ACCURACY VS BASELINE (%)", 1, 0, black);
    for (int k = 1; k < f.n_front; k++) {
        const tl_pareto_row *a = &t->rows[f.order[k - 1]], *b = &t->rows[f.order[k]];
        line(&c, px(&f, f.mem[f.order[k - 1]]), py(&f, clamp_acc(&f, 100 * a->acc)), px(&f, f.mem[f.order[k]]),
             py(&f, clamp_acc(&f, 100 * b->acc)), red, 2, 0);
    }
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (!shown(&f, r, i) || f.front[i] || r->baseline) continue;
        disc(&c, px(&f, f.mem[i]), py(&f, clamp_acc(&f, 100 * r->acc)), 3, grey);
    }
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (!shown(&f, r, i) || !(f.front[i] || r->baseline)) continue;
        const double x = px(&f, f.mem[i]), y = py(&f, clamp_acc(&f, 100 * r->acc));
        disc(&c, x, y, 4, r->baseline ? blue : red);
        double lx, ly;
        place_label(&f, x, y, strlen(r->label) * 6.0, &lx, &ly);
        text(&c, lx, ly + 1, r->label, 1, 0, r->baseline ? blue : red);
    }
    free_frame(&f);
    size_t len;
    unsigned char *png = png_encode(c.p, W, H, &len);
    free(c.p);
    int rc = tl_write_file(path, (const char *)png, len, err);
    free(png);
    return rc;
}
