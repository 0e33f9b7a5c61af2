/* frontier.c: non-dominated configurations and picks under constraints. */
#include "pareto.h"

#include <math.h>

/* a dominates b: no worse in every objective and strictly better in one */
static bool dominates(const tl_pareto_point *a, const tl_pareto_point *b, bool use_speed) {
    bool better = false;
    if (a->mem > b->mem || a->acc < b->acc) return false;
    if (a->mem < b->mem || a->acc > b->acc) better = true;
    if (use_speed && !isnan(a->speed) && !isnan(b->speed)) {
        if (a->speed < b->speed) return false;
        if (a->speed > b->speed) better = true;
    }
    return better;
}

int tl_pareto_frontier(const tl_pareto_point *p, int n, bool use_speed, int *on) {
    int count = 0;
    for (int i = 0; i < n; i++) {
        on[i] = !p[i].failed && !isnan(p[i].mem) && !isnan(p[i].acc);
        for (int j = 0; j < n && on[i]; j++)
            if (j != i && !p[j].failed && !isnan(p[j].mem) && !isnan(p[j].acc) && dominates(&p[j], &p[i], use_speed))
                on[i] = 0;
        count += on[i];
    }
    return count;
}

static bool usable(const tl_pareto_point *q) { return !q->failed && !isnan(q->mem) && !isnan(q->acc); }

static double spd(const tl_pareto_point *q) { return isnan(q->speed) ? -1 : q->speed; }

int tl_pareto_pick_budget(const tl_pareto_point *p, int n, double budget) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (!usable(&p[i]) || p[i].mem > budget) continue;
        if (best < 0 || p[i].acc > p[best].acc ||
            (p[i].acc == p[best].acc && (p[i].mem < p[best].mem || (p[i].mem == p[best].mem && spd(&p[i]) > spd(&p[best])))))
            best = i;
    }
    return best;
}

int tl_pareto_pick_min_mem(const tl_pareto_point *p, int n, double min_acc) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (!usable(&p[i]) || p[i].acc < min_acc) continue;
        if (best < 0 || p[i].mem < p[best].mem ||
            (p[i].mem == p[best].mem && (p[i].acc > p[best].acc || (p[i].acc == p[best].acc && spd(&p[i]) > spd(&p[best])))))
            best = i;
    }
    return best;
}
