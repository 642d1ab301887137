/* Tests common/batch: allocation, IGNORE fill, shifted target counting with right padding. Run: ctest -R test_batch */
#include "common/batch.h"
#include "common/err.h"
#include "tests/test.h"

int main(void) {
    log_set_level(LOG_NONE);
    batch_t b;
    CHECK_RC(batch_alloc(&b, 0, 4, 0, 0), LLAVA_EINVAL);
    CHECK_RC(batch_alloc(&b, 2, 5, 1, 14), 0);
    CHECK(b.labels[9] == LLAVA_IGNORE_INDEX);
    CHECK(b.pixel_values != NULL);
    b.lengths[0] = 5;
    b.lengths[1] = 3;
    int32_t l0[5] = {-100, -100, 7, 8, 9}, l1[5] = {4, 5, -100, 6, 6}; /* row 1: positions >= 3 are padding */
    memcpy(b.labels, l0, sizeof l0);
    memcpy(b.labels + 5, l1, sizeof l1);
    /* row 0: positions 2,3,4 count (3); row 1: position 0 never counts (nothing predicts it), 1 counts, 2 ignored */
    CHECK_EQ_INT(batch_count_targets(&b), 4);
    CHECK_EQ_INT(b.n_targets, 4);
    batch_free(&b);
    CHECK(b.labels == NULL && b.B == 0);
    batch_free(&b);
    return test_finish();
}
