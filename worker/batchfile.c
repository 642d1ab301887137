/* Batch safetensors reader; see batchfile.h. Tested through llava-model step (tests/integration/model_step.sh) and
 * tests/unit/test_model_parity.c. */
#include "worker/batchfile.h"

#include <stdint.h>
#include <string.h>

#include "common/err.h"
#include "common/safetensors.h"

static int get_bt(const st_file_t *f, const char *path, const char *name, int B, int T, const st_tensor_t **out) {
    int rc = 0;
    const st_tensor_t *t = st_file_find(f, name);
    CHECK_GOTO(t, LLAVA_ENOTFOUND, "%s: missing tensor '%s'", path, name);
    CHECK_GOTO(t->dtype == DT_I64 && t->ndim == 2, LLAVA_ESHAPE, "%s: '%s' must be I64 [B, T] (got %s, %d dims)",
               path, name, dtype_name(t->dtype), t->ndim);
    CHECK_GOTO(B < 0 || (t->shape[0] == B && t->shape[1] == T), LLAVA_ESHAPE,
               "%s: '%s' is [%lld, %lld], input_ids is [%d, %d]", path, name, (long long)t->shape[0],
               (long long)t->shape[1], B, T);
    *out = t;
cleanup:
    return rc;
}

static int64_t rd64(const st_tensor_t *t, size_t i) {
    int64_t v;
    memcpy(&v, (const char *)t->data + i * 8, 8);
    return v;
}

int batch_file_read(const char *path, batch_t *b) {
    int rc = 0;
    st_file_t *f = NULL;
    const st_tensor_t *ids, *lab, *mask, *px;
    memset(b, 0, sizeof *b);
    RC_CHECK_GOTO(st_file_open(path, &f));
    RC_CHECK_GOTO(get_bt(f, path, "input_ids", -1, -1, &ids));
    int64_t B = ids->shape[0], T = ids->shape[1];
    CHECK_GOTO(B > 0 && T > 0 && B * T <= (1 << 26), LLAVA_ESHAPE, "%s: input_ids [%lld, %lld] is empty or too large",
               path, (long long)B, (long long)T);
    RC_CHECK_GOTO(get_bt(f, path, "labels", (int)B, (int)T, &lab));
    RC_CHECK_GOTO(get_bt(f, path, "attention_mask", (int)B, (int)T, &mask));
    px = st_file_find(f, "pixel_values");
    int64_t n_img = 0, S = 0;
    if (px) {
        CHECK_GOTO(px->dtype == DT_F32 && px->ndim == 4 && px->shape[1] == 3 && px->shape[2] == px->shape[3],
                   LLAVA_ESHAPE, "%s: 'pixel_values' must be F32 [N, 3, S, S]", path);
        n_img = px->shape[0];
        S = px->shape[2];
        CHECK_GOTO(n_img * 3 * S * S <= (int64_t)1 << 31, LLAVA_ESHAPE, "%s: 'pixel_values' is too large", path);
    }
    RC_CHECK_GOTO(batch_alloc(b, (int)B, (int)T, (int)n_img, (int)S));
    for (int64_t r = 0; r < B; r++) {
        int len = 0, ended = 0;
        for (int64_t t = 0; t < T; t++) {
            size_t i = (size_t)(r * T + t);
            int64_t m = rd64(mask, i), id = rd64(ids, i), l = rd64(lab, i);
            CHECK_GOTO(m == 0 || m == 1, LLAVA_EINVAL, "%s: attention_mask[%lld, %lld] = %lld (want 0 or 1)", path,
                       (long long)r, (long long)t, (long long)m);
            CHECK_GOTO(!(m == 1 && ended), LLAVA_EINVAL,
                       "%s: row %lld is not right-padded (attention_mask has a 1 after a 0 at position %lld); left "
                       "padding is not supported",
                       path, (long long)r, (long long)t);
            if (m == 1) len++;
            else ended = 1;
            CHECK_GOTO(id >= INT32_MIN && id <= INT32_MAX && l >= INT32_MIN && l <= INT32_MAX, LLAVA_EINVAL,
                       "%s: row %lld position %lld: id or label outside int32", path, (long long)r, (long long)t);
            b->input_ids[i] = (int32_t)id;
            b->labels[i] = (int32_t)l;
        }
        CHECK_GOTO(len > 0, LLAVA_EINVAL, "%s: row %lld has no tokens (attention_mask all 0)", path, (long long)r);
        b->lengths[r] = len;
    }
    if (n_img > 0) RC_CHECK_GOTO(st_tensor_to_f32(px, b->pixel_values, n_img * 3 * S * S));
    batch_count_targets(b);
cleanup:
    if (rc) batch_free(b);
    st_file_close(&f);
    return rc;
}
