/* Reads a training batch from a safetensors file (pixel_values F32 [N,3,S,S], input_ids I64 [B,T], labels I64
 * [B,T], attention_mask I64 [B,T] with right padding) into a batch_t, checking shapes, dtypes and padding.
 * Used by llava-model step and tests/unit/test_model_parity.c; bad files are covered by tests/integration/model_step.sh. */
#ifndef LLAVA_WORKER_BATCHFILE_H
#define LLAVA_WORKER_BATCHFILE_H

#include "common/batch.h"

/** Fills *b (free with batch_free). pixel_values may be absent or have N = 0 for a text-only batch. Returns 0,
 *  LLAVA_EIO / LLAVA_EFORMAT (unreadable file), LLAVA_ENOTFOUND (a tensor is missing), LLAVA_ESHAPE (wrong shape
 *  or dtype), LLAVA_EINVAL (left padding, a row without tokens, values outside int32) or LLAVA_ENOMEM; every error
 *  is logged with the tensor's name. */
int batch_file_read(const char *path, batch_t *b);

#endif
