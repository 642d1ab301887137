/* Tests common/tensor: dtype names and conversions, arena planning, alignment, lookup, errors.
 * Run: ctest -R test_tensor */
#include "common/err.h"
#include "common/tensor.h"
#include "tests/test.h"

#include <stdint.h>

static void test_dtypes(void) {
    dtype_t dt;
    CHECK_RC(dtype_parse("BF16", &dt), 0);
    CHECK_EQ_INT(dt, DT_BF16);
    CHECK_EQ_INT(dtype_size(DT_I64), 8);
    CHECK_RC(dtype_parse("F64", &dt), LLAVA_EFORMAT);
    CHECK_RC(dtype_parse("f32", &dt), LLAVA_EFORMAT); /* names are case-sensitive in safetensors */
    /* bf16: exact values round-trip, ties go to even */
    CHECK(bf16_to_f32(f32_to_bf16(1.5f)) == 1.5f);
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80); /* halfway 1 + 2^-8: even is 0x3f80 */
    CHECK(f32_to_bf16(1.01171875f) == 0x3f82); /* halfway 1 + 3*2^-8: even is 0x3f82 */
    CHECK(f32_to_bf16(NAN) != f32_to_bf16(INFINITY));
    /* f16: known encodings */
    CHECK(f32_to_f16(1.0f) == 0x3c00);
    CHECK(f32_to_f16(-2.0f) == 0xc000);
    CHECK(f32_to_f16(65504.0f) == 0x7bff);
    CHECK(f32_to_f16(1e6f) == 0x7c00);
    CHECK(f16_to_f32(0x0001) == 5.9604644775390625e-08f); /* smallest subnormal */
    for (uint32_t h = 0; h < 0x7c00; h++) CHECKF(f32_to_f16(f16_to_f32((uint16_t)h)) == h, "f16 %x", h);
}

static void test_arena(void) {
    arena_t *a = arena_new("params");
    CHECK(a != NULL);
    int64_t s1[2] = {3, 5}, s2[1] = {7}, s3[3] = {2, 2, 2};
    CHECK_EQ_INT(arena_add(a, "w", DT_F32, 2, s1), 0);
    CHECK_EQ_INT(arena_add(a, "b", DT_F32, 1, s2), 1);
    CHECK_RC(arena_add(a, "w", DT_F32, 1, s2), LLAVA_EINVAL); /* duplicate */
    CHECK_RC(arena_add(a, "x", DT_F32, 9, s2), LLAVA_EINVAL); /* too many dims */
    for (int i = 0; i < 300; i++) { /* force rehashing */
        char name[32];
        snprintf(name, sizeof name, "t%d", i);
        CHECK_EQ_INT(arena_add(a, name, DT_U8, 3, s3), i + 2);
    }
    CHECK_EQ_INT(arena_count(a), 302);
    CHECK_RC(arena_alloc(a), 0);
    CHECK_RC(arena_add(a, "late", DT_F32, 1, s2), LLAVA_EINVAL);
    tensor_t *w = arena_get(a, "w"), *b = arena_get(a, "b"), *t299 = arena_get(a, "t299");
    CHECK(w && b && t299);
    CHECK(arena_get(a, "nope") == NULL);
    if (w && b && t299) {
        CHECK_EQ_INT(tensor_numel(w), 15);
        CHECK_EQ_INT(w->nbytes, 60);
        CHECK_EQ_INT(b->offset % ARENA_ALIGN, 0);
        CHECK_EQ_INT((uintptr_t)b->data % ARENA_ALIGN, 0);
        CHECK((char *)b->data >= (char *)w->data + w->nbytes);
        CHECK((char *)t299->data + t299->nbytes <= (char *)arena_data(a) + arena_bytes(a));
        char buf[64];
        CHECK(strcmp(tensor_shape_str(w, buf, sizeof buf), "[3, 5]") == 0);
        float *wf = w->data;
        CHECK(wf[14] == 0.0f); /* zero-filled */
    }
    CHECK_EQ_INT(arena_numel(a), 15 + 7 + 300 * 8);
    arena_free(&a);
    CHECK(a == NULL);
    arena_free(&a); /* safe on NULL */
}

int main(void) {
    log_set_level(LOG_NONE);
    test_dtypes();
    test_arena();
    return test_finish();
}
