/* util.c: small helpers of the server: UTF-8 repair, constant-time compare, error objects. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

size_t tl_utf8_incomplete_tail(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    /* walk back over at most 3 continuation bytes to a lead byte */
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned c = u[n - k];
        if ((c & 0xC0) == 0x80) continue;
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

char *tl_utf8_sanitize(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    char *out = tl_xmalloc(n * 3 + 1); /* each bad byte becomes 3 bytes at most */
    size_t o = 0, i = 0;
    while (i < n) {
        size_t l = tl_utf8_seq_len(s, n, i);
        if (l && !(l == 1 && u[i] == 0)) {
            memcpy(out + o, s + i, l);
            o += l;
            i += l;
        } else if (l) { /* a NUL would end the C string early: drop it */
            i++;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

bool tl_ct_equal(const char *a, size_t na, const char *b, size_t nb) {
    /* Loop over the secret's length (b) whatever a is, and fold the length difference in. */
    volatile unsigned char diff = (unsigned char)(na != nb);
    for (size_t i = 0; i < nb; i++) {
        unsigned char x = i < na ? (unsigned char)a[i] : 0;
        diff |= (unsigned char)(x ^ (unsigned char)b[i]);
    }
    return diff == 0;
}

char *tl_error_json(const char *message, const char *type, const char *param, const char *code) {
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    char *msg = tl_utf8_sanitize(message, strlen(message));
    cJSON_AddStringToObject(e, "message", msg);
    free(msg);
    cJSON_AddStringToObject(e, "type", type ? type : "invalid_request_error");
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}
