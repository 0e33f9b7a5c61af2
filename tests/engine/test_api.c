/* test_api: the layering docs/architecture.md promises, checked on the sources (TL_SRC):
 *  - the tools (tools/) use the engine through include/tailor.h only: their quoted includes
 *    are tailor.h and the tools' own headers;
 *  - nothing in src/ includes anything from tools/;
 *  - nothing in src/ outside src/cuda/ includes the CUDA backend's headers: the engine reaches
 *    it through its table (engine/backend.h) in the shared object it opens;
 *  - every file of src/ sits in a layer's folder, and includes headers of its own folder and
 *    of lower layers only (docs/architecture.md, Layers);
 *  - include/tailor.h includes system headers only (it is the whole public face);
 *  - tests/ mirrors the layers: every test_*.c sits in tests/<folder>/, the folder one of
 *    src/'s (the table below) or tools; tests/ itself holds only the shared helpers. */
#define _GNU_SOURCE
#include "../testutil.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

/* Calls fn for each quoted include of path ("x.h" in #include "x.h"). */
static void each_include(const char *path, void (*fn)(const char *path, const char *inc)) {
    char *text = tl_test_read_file(path, NULL);
    CHECKF(text != NULL, "%s: cannot read", path);
    if (!text) return;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t') line++;
        if (strncmp(line, "#include", 8)) continue;
        char *q = strchr(line, '"');
        if (!q) continue; /* <system.h> */
        char *end = strchr(q + 1, '"');
        if (!end) continue;
        *end = 0;
        fn(path, q + 1);
    }
    free(text);
}

/* Calls fn for every .c, .h, .cu and .cuh file under dir (recursively). */
static int walk(const char *dir, void (*fn)(const char *path, const char *inc)) {
    DIR *d = opendir(dir);
    CHECKF(d != NULL, "%s: cannot open", dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        const char *dot = strrchr(e->d_name, '.');
        if (e->d_type == DT_DIR) n += walk(path, fn);
        else if (dot && (!strcmp(dot, ".c") || !strcmp(dot, ".h") || !strcmp(dot, ".cu") || !strcmp(dot, ".cuh"))) {
            each_include(path, fn);
            n++;
        }
    }
    closedir(d);
    return n;
}

static void tool_include(const char *path, const char *inc) {
    const bool ok = !strcmp(inc, "cli.h") || !strcmp(inc, "eval_cli.h") || !strcmp(inc, "../include/tailor.h");
    CHECKF(ok, "%s includes \"%s\": a tool includes only tailor.h and the tools' own headers", path, inc);
}

/* The folders of src/ and their layers, bottom up (docs/architecture.md, Layers). */
static const struct {
    const char *dir;
    int layer;
    bool face_only; /* uses the engine through include/tailor.h only: of src/ it includes base/ */
} layers[] = {
    {"base", 0, false},    {"cpu", 1, false},  {"model", 2, false}, {"kv", 2, false},
    {"engine", 3, false},  {"cuda", 4, false}, {"convert", 4, false}, {"eval", 4, false},
    {"server", 4, true},   {"pareto", 5, false},
};

static char src_root[4096]; /* realpath of $TL_SRC/src, with a trailing '/' */

/* The layer of the folder of src/ that holds path (a realpath under src_root), -1 when none. */
static int layer_of(const char *path, char *dir, size_t dir_size) {
    const char *rel = path + strlen(src_root);
    const char *slash = strchr(rel, '/');
    snprintf(dir, dir_size, "%.*s", slash ? (int)(slash - rel) : 0, rel);
    for (size_t i = 0; slash && i < sizeof layers / sizeof layers[0]; i++)
        if (!strcmp(dir, layers[i].dir)) return layers[i].layer;
    return -1;
}

static void src_include(const char *path, const char *inc) {
    CHECKF(!strstr(inc, "tools/"), "%s includes \"%s\": src/ includes nothing from tools/", path, inc);
    CHECKF(strstr(path, "/src/cuda/") || !strstr(inc, "cuda/"),
           "%s includes \"%s\": the engine reaches the CUDA backend through its table only", path, inc);
    /* the layers: src/ is no include folder, so an include is a path from the file's folder */
    char from[4096], to[4096], joined[8192], from_dir[256], to_dir[256];
    const char *slash = strrchr(path, '/');
    snprintf(joined, sizeof joined, "%.*s/%s", (int)(slash - path), path, inc);
    if (!realpath(path, from)) return;
    const int lf = layer_of(from, from_dir, sizeof from_dir);
    CHECKF(lf >= 0, "%s: every file of src/ lives in a layer's folder (the table above, docs/architecture.md)",
           path);
    if (!realpath(joined, to)) return;                   /* include/'s tailor.h, by the include folder */
    if (strncmp(to, src_root, strlen(src_root))) return; /* outside src/: include/ */
    const int lt = layer_of(to, to_dir, sizeof to_dir);
    CHECKF(lt >= 0, "%s includes \"%s\": not in one of the layers' folders", path, inc);
    if (lf < 0 || lt < 0 || !strcmp(from_dir, to_dir)) return;
    CHECKF(lt < lf, "%s includes \"%s\": src/%s/ (layer %d) includes only lower layers, not src/%s/ (layer %d)",
           path, inc, from_dir, lf, to_dir, lt);
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++)
        if (layers[i].face_only && !strcmp(from_dir, layers[i].dir))
            CHECKF(!strcmp(to_dir, "base"),
                   "%s includes \"%s\": src/%s/ uses the engine through include/tailor.h only (of src/, base/)", path,
                   inc, from_dir);
}

/* tests/: no test at the top, each folder a layer's (or tools, or fixtures); the tests found. */
static int tests_layout(const char *tests) {
    DIR *d = opendir(tests);
    CHECKF(d != NULL, "%s: cannot open", tests);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        const char *name = e->d_name;
        if (e->d_type != DT_DIR) {
            CHECKF(strncmp(name, "test_", 5), "tests/%s: a test sits in its layer's folder (tests/<layer>/)", name);
            continue;
        }
        if (!strcmp(name, "fixtures")) continue;
        bool known = !strcmp(name, "tools");
        for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++)
            known = known || !strcmp(name, layers[i].dir);
        CHECKF(known, "tests/%s/: not a folder of src/ (docs/architecture.md, Layers) nor tools", name);
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", tests, name);
        DIR *t = opendir(sub);
        if (!t) continue;
        for (struct dirent *f; (f = readdir(t));) {
            const size_t len = strlen(f->d_name);
            if (!strncmp(f->d_name, "test_", 5) && len > 2 && !strcmp(f->d_name + len - 2, ".c")) n++;
        }
        closedir(t);
    }
    closedir(d);
    return n;
}

static void public_include(const char *path, const char *inc) {
    CHECKF(false, "%s includes \"%s\": the public header includes system headers only", path, inc);
}

int main(void) {
    const char *src = getenv("TL_SRC");
    if (!src) {
        tl_test_skip("TL_SRC not set (run through ctest)");
        return tl_test_done();
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tools", src);
    CHECKF(walk(dir, tool_include) > 10, "%s: the tools' sources", dir);
    snprintf(dir, sizeof dir, "%s/src", src);
    if (!realpath(dir, src_root)) {
        CHECKF(false, "%s: cannot resolve", dir);
        return tl_test_done();
    }
    strcat(src_root, "/");
    CHECKF(walk(dir, src_include) > 50, "%s: the library's sources", dir);
    snprintf(dir, sizeof dir, "%s/include/tailor.h", src);
    each_include(dir, public_include);
    snprintf(dir, sizeof dir, "%s/tests", src);
    CHECKF(tests_layout(dir) > 30, "%s: the tests, one folder per layer", dir);
    return tl_test_done();
}
