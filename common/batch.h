/* The micro-batch handed to the model: what collate (common/dataset) produces and llava_forward_backward consumes.
 * Same layout as Hugging Face's LlavaForConditionalGeneration inputs: each image is a run of image_token_index,
 * one per patch; labels are unshifted (-100 = ignored), the shift by one happens inside the loss. */
#ifndef LLAVA_BATCH_H
#define LLAVA_BATCH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLAVA_IGNORE_INDEX (-100)

typedef struct {
    int B, T;              /* rows and padded length */
    int32_t *input_ids;    /* [B*T] */
    int32_t *labels;       /* [B*T], LLAVA_IGNORE_INDEX where no loss */
    int32_t *lengths;      /* [B]: real tokens of each row; the rest is right padding (attention_mask 0) */
    int n_images;          /* images in the batch, in the order their token runs appear, row by row */
    int image_size;        /* S */
    float *pixel_values;   /* [n_images, 3, S, S], normalised */
    int64_t n_targets;     /* labels != IGNORE at positions 1..len-1 of each row (what the shifted loss counts) */
} batch_t;

/** Allocates the arrays of a batch (zeroed; labels set to IGNORE). Returns 0 or LLAVA_ENOMEM. */
int batch_alloc(batch_t *b, int B, int T, int n_images, int image_size);
/** Frees the arrays and zeroes the struct. Safe on a zeroed struct. */
void batch_free(batch_t *b);
/** Recomputes b->n_targets from labels and lengths (shifted: label at t counts for t >= 1, t < length). */
int64_t batch_count_targets(batch_t *b);

#ifdef __cplusplus
}
#endif

#endif
