/* plot.c: memory vs accuracy scatter with the frontier line, as SVG and as PNG.
 * One drawing routine (draw) walks the plot once and emits each element through a pen that is
 * either SVG text or a cairo context (builds with TL_HAVE_CAIRO), so the two show the same
 * thing: grid, ticks, axes, labels, points with their intervals, the frontier line. */
#include "pareto.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef TL_HAVE_CAIRO
#include <cairo.h>
#endif

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

/* a label position near (x, y) that overlaps no label placed before: right of the point, or
 * left of it where the label would leave the picture */
static void place_label(frame *f, double x, double y, double w, double *lx, double *ly) {
    static const double dy[6] = {-6, 14, -18, 26, -30, 38};
    const double bx = x + 7 + w > W - 4 ? x - 7 - w : x + 7;
    for (int k = 0; k < 6; k++) {
        const double by = y + dy[k];
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

/* ---- pens: each element as SVG text or drawn with cairo ---- */

#define NONE 0x1000000u /* no fill / no stroke (colours are 0xRRGGBB) */
#define WHITE 0xffffffu
#define INK 0x222222u     /* text */
#define AXIS 0x333333u    /* plot frame */
#define GRID 0xeeeeeeu
#define GREY 0x999999u    /* dominated points, the baseline's 100% line */
#define RED 0xd62728u     /* the frontier */
#define BLUE 0x1f77b4u    /* the baseline */
#define FONT "DejaVu Sans"

enum { LEFT, CENTRE, RIGHT };

typedef struct {
    tl_strbuf *svg; /* SVG text, or (svg NULL) */
#ifdef TL_HAVE_CAIRO
    cairo_t *cr;    /* a cairo context */
#endif
} pen;

#ifdef TL_HAVE_CAIRO
static void cr_rgb(cairo_t *cr, unsigned rgb) {
    cairo_set_source_rgb(cr, (rgb >> 16) / 255.0, (rgb >> 8 & 255) / 255.0, (rgb & 255) / 255.0);
}
/* a 1-pixel stroke centred on n + 0.5 covers one column or row of pixels instead of two halves */
static double crisp(double v) { return floor(v) + 0.5; }
#endif

static void pen_rect(pen *p, double x, double y, double w, double h, unsigned fill, unsigned stroke) {
    if (p->svg) {
        tl_strbuf_printf(p->svg, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"", x, y, w, h);
        if (fill == NONE) tl_strbuf_printf(p->svg, " fill=\"none\"");
        else tl_strbuf_printf(p->svg, " fill=\"#%06x\"", fill);
        if (stroke != NONE) tl_strbuf_printf(p->svg, " stroke=\"#%06x\"", stroke);
        tl_strbuf_printf(p->svg, "/>\n");
        return;
    }
#ifdef TL_HAVE_CAIRO
    cairo_t *cr = p->cr;
    if (fill != NONE) {
        cairo_rectangle(cr, x, y, w, h);
        cr_rgb(cr, fill);
        cairo_fill(cr);
    }
    if (stroke != NONE) {
        cairo_rectangle(cr, crisp(x), crisp(y), round(w), round(h));
        cr_rgb(cr, stroke);
        cairo_set_line_width(cr, 1);
        cairo_stroke(cr);
    }
#endif
}

static void pen_line(pen *p, double x0, double y0, double x1, double y1, unsigned rgb, double width, bool dashed) {
    if (p->svg) {
        tl_strbuf_printf(p->svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#%06x\"", x0, y0, x1, y1, rgb);
        if (width != 1) tl_strbuf_printf(p->svg, " stroke-width=\"%g\"", width);
        if (dashed) tl_strbuf_printf(p->svg, " stroke-dasharray=\"4 4\"");
        tl_strbuf_printf(p->svg, "/>\n");
        return;
    }
#ifdef TL_HAVE_CAIRO
    cairo_t *cr = p->cr;
    if (width == 1 && x0 == x1) x0 = x1 = crisp(x0);
    if (width == 1 && y0 == y1) y0 = y1 = crisp(y0);
    static const double dash[1] = {4};
    cairo_set_dash(cr, dash, dashed ? 1 : 0, 0);
    cairo_set_line_width(cr, width);
    cr_rgb(cr, rgb);
    cairo_move_to(cr, x0, y0);
    cairo_line_to(cr, x1, y1);
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
#endif
}

/* xy: n points as x, y pairs */
static void pen_polyline(pen *p, const double *xy, int n, unsigned rgb, double width) {
    if (p->svg) {
        tl_strbuf_printf(p->svg, "<polyline fill=\"none\" stroke=\"#%06x\" stroke-width=\"%g\" points=\"", rgb, width);
        for (int k = 0; k < n; k++) tl_strbuf_printf(p->svg, "%.1f,%.1f ", xy[2 * k], xy[2 * k + 1]);
        tl_strbuf_printf(p->svg, "\"/>\n");
        return;
    }
#ifdef TL_HAVE_CAIRO
    cairo_t *cr = p->cr;
    for (int k = 0; k < n; k++) cairo_line_to(cr, xy[2 * k], xy[2 * k + 1]);
    cairo_set_line_width(cr, width);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cr_rgb(cr, rgb);
    cairo_stroke(cr);
#endif
}

/* tip: the SVG's hover text (a <title>); the PNG has none */
static void pen_dot(pen *p, double x, double y, double r, unsigned rgb, const char *tip) {
    if (p->svg) {
        tl_strbuf_printf(p->svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%g\" fill=\"#%06x\"><title>", x, y, r, rgb);
        tl_strbuf_xml(p->svg, tip);
        tl_strbuf_printf(p->svg, "</title></circle>\n");
        return;
    }
#ifdef TL_HAVE_CAIRO
    cairo_new_sub_path(p->cr);
    cairo_arc(p->cr, x, y, r, 0, 2 * M_PI);
    cr_rgb(p->cr, rgb);
    cairo_fill(p->cr);
#endif
}

/* (x, y) is the baseline's anchor point; vertical text reads bottom to top */
static void pen_text(pen *p, double x, double y, double size, int anchor, bool vertical, unsigned rgb, const char *s) {
    static const char *const anchors[3] = {"start", "middle", "end"};
    if (p->svg) {
        if (vertical) tl_strbuf_printf(p->svg, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\"", x, y);
        else tl_strbuf_printf(p->svg, "<text x=\"%.1f\" y=\"%.1f\"", x, y);
        tl_strbuf_printf(p->svg, " font-size=\"%g\" text-anchor=\"%s\" fill=\"#%06x\">", size, anchors[anchor], rgb);
        tl_strbuf_xml(p->svg, s);
        tl_strbuf_printf(p->svg, "</text>\n");
        return;
    }
#ifdef TL_HAVE_CAIRO
    cairo_t *cr = p->cr;
    char u[2048]; /* cairo takes valid UTF-8 only: labels and the model's name come from files */
    tl_escape(u, sizeof u, s, strlen(s), NULL);
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents_t e;
    cairo_text_extents(cr, u, &e);
    cairo_save(cr);
    cairo_translate(cr, x, y);
    if (vertical) cairo_rotate(cr, -M_PI / 2);
    cairo_move_to(cr, anchor == CENTRE ? -e.x_advance / 2 : anchor == RIGHT ? -e.x_advance : 0, 0);
    cr_rgb(cr, rgb);
    cairo_show_text(cr, u);
    cairo_restore(cr);
#endif
}

/* ---- the plot ---- */

static void draw(pen *p, const tl_pareto_table *t, const char *title, int which) {
    frame f;
    make_frame(t, which, &f);
    char buf[700];
    pen_rect(p, 0, 0, W, H, WHITE, NONE);
    /* the title at 17 px, smaller where it would not fit (DejaVu Sans averages ~0.56 em a character) */
    if (!title) title = "KV Pareto";
    pen_text(p, W / 2.0, 28, fmin(17, floor((W - 20) / (0.56 * (double)strlen(title)))), CENTRE, false, INK, title);
    /* grid and ticks */
    const double xs = nice_step(f.x1 - f.x0), ys = nice_step(f.y1 - f.y0);
    for (double x = ceil(f.x0 / xs) * xs; x <= f.x1; x += xs) {
        pen_line(p, px(&f, x), MT, px(&f, x), H - MB, GRID, 1, false);
        snprintf(buf, sizeof buf, "%g", x);
        pen_text(p, px(&f, x), H - MB + 18, 12, CENTRE, false, INK, buf);
    }
    for (double y = ceil(f.y0 / ys) * ys; y <= f.y1; y += ys) {
        pen_line(p, ML, py(&f, y), W - MR, py(&f, y), GRID, 1, false);
        snprintf(buf, sizeof buf, "%g", y);
        pen_text(p, ML - 6, py(&f, y) + 4, 12, RIGHT, false, INK, buf);
    }
    pen_rect(p, ML, MT, W - ML - MR, H - MT - MB, NONE, AXIS);
    pen_text(p, (ML + W - MR) / 2.0, H - 25, 14, CENTRE, false, INK, axis_name(t, which, buf, sizeof buf));
    pen_text(p, 22, (MT + H - MB) / 2.0, 14, CENTRE, true, INK, "accuracy relative to baseline (%)");
    if (t->base >= 0) pen_line(p, ML, py(&f, 100), W - MR, py(&f, 100), GREY, 1, true);
    /* the frontier line, by memory */
    if (f.n_front > 1) {
        double *xy = tl_xcalloc(2 * (size_t)f.n_front, sizeof *xy);
        for (int k = 0; k < f.n_front; k++) {
            xy[2 * k] = px(&f, f.mem[f.order[k]]);
            xy[2 * k + 1] = py(&f, clamp_acc(&f, 100 * t->rows[f.order[k]].acc));
        }
        pen_polyline(p, xy, f.n_front, RED, 2);
        free(xy);
    }
    /* points: the 95% interval as an error bar, labels on the frontier and the baseline */
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (!shown(&f, r, i)) continue;
        const bool fr = f.front[i];
        const double x = px(&f, f.mem[i]), y = py(&f, clamp_acc(&f, 100 * r->acc));
        const unsigned col = r->baseline ? BLUE : fr ? RED : GREY;
        if (!r->baseline && !isnan(r->acc_lo) && !isnan(r->acc_hi))
            pen_line(p, x, py(&f, clamp_acc(&f, 100 * r->acc_lo)), x, py(&f, clamp_acc(&f, 100 * r->acc_hi)), col, 1, false);
        snprintf(buf, sizeof buf, "%s: %.1f MiB, %.2f%%", r->label, f.mem[i], 100 * r->acc);
        pen_dot(p, x, y, fr || r->baseline ? 5 : 4, col, buf);
        if (fr || r->baseline) {
            double lx, ly;
            place_label(&f, x, y, strlen(r->label) * 5.5, &lx, &ly);
            pen_text(p, lx, ly, 10, LEFT, false, col, r->label);
        }
    }
    free_frame(&f);
}

char *tl_pareto_svg(const tl_pareto_table *t, const char *title, int which) {
    tl_strbuf b = {0};
    tl_strbuf_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                         "font-family=\"'" FONT "', sans-serif\">\n", W, H);
    pen p = {.svg = &b};
    draw(&p, t, title, which);
    tl_strbuf_printf(&b, "</svg>\n");
    return b.p;
}

#ifdef TL_HAVE_CAIRO
bool tl_pareto_have_png(void) { return true; }

static cairo_status_t to_file(void *f, const unsigned char *data, unsigned int n) {
    return fwrite(data, 1, n, f) == n ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

int tl_pareto_png(const tl_pareto_table *t, const char *title, int which, const char *path, tl_error *err) {
    tl_outfile o;
    if (tl_outfile_open(&o, path, NULL, err)) return -1;
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
    cairo_t *cr = cairo_create(s);
    pen p = {.cr = cr};
    draw(&p, t, title, which);
    cairo_status_t st = cairo_status(cr);
    cairo_destroy(cr);
    if (st == CAIRO_STATUS_SUCCESS) {
        errno = 0;
        st = cairo_surface_write_to_png_stream(s, to_file, o.f);
    }
    cairo_surface_destroy(s);
    if (st != CAIRO_STATUS_SUCCESS) {
        tl_fail(err, "%s: %s", path, st == CAIRO_STATUS_WRITE_ERROR && errno ? strerror(errno) : cairo_status_to_string(st));
        tl_outfile_abort(&o);
        return -1;
    }
    return tl_outfile_commit(&o, err);
}
#else
bool tl_pareto_have_png(void) { return false; }

int tl_pareto_png(const tl_pareto_table *t, const char *title, int which, const char *path, tl_error *err) {
    return tl_fail(err, "%s: PNG plots need cairo (this tailor was built without it)", path);
}
#endif
