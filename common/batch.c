/* Micro-batch allocation and target counting (see batch.h). Tested by tests/unit/test_batch.c. */
#include "common/batch.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

int batch_alloc(batch_t *b, int B, int T, int n_images, int image_size) {
    int rc = 0;
    memset(b, 0, sizeof *b);
    CHECK_GOTO(B > 0 && T > 0 && n_images >= 0 && image_size >= 0, LLAVA_EINVAL, "batch_alloc: bad sizes B=%d T=%d images=%d S=%d",
               B, T, n_images, image_size);
    b->B = B;
    b->T = T;
    b->n_images = n_images;
    b->image_size = image_size;
    b->input_ids = calloc((size_t)B * T, sizeof *b->input_ids);
    ALLOC_CHECK_GOTO(b->input_ids);
    b->labels = malloc((size_t)B * T * sizeof *b->labels);
    ALLOC_CHECK_GOTO(b->labels);
    for (size_t i = 0; i < (size_t)B * T; i++) b->labels[i] = LLAVA_IGNORE_INDEX;
    b->lengths = calloc((size_t)B, sizeof *b->lengths);
    ALLOC_CHECK_GOTO(b->lengths);
    if (n_images > 0) {
        b->pixel_values = calloc((size_t)n_images * 3 * image_size * image_size, sizeof *b->pixel_values);
        ALLOC_CHECK_GOTO(b->pixel_values);
    }
    return 0;
cleanup:
    batch_free(b);
    return rc;
}

void batch_free(batch_t *b) {
    free(b->input_ids);
    free(b->labels);
    free(b->lengths);
    free(b->pixel_values);
    memset(b, 0, sizeof *b);
}

int64_t batch_count_targets(batch_t *b) {
    int64_t n = 0;
    for (int r = 0; r < b->B; r++)
        for (int t = 1; t < b->lengths[r] && t < b->T; t++)
            if (b->labels[(size_t)r * b->T + t] != LLAVA_IGNORE_INDEX) n++;
    b->n_targets = n;
    return n;
}
