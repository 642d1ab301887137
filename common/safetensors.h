/* Safetensors files: a bounds-checked, memory-mapped reader (single file or a sharded model directory) and an
 * atomic writer whose bytes match Python's safetensors library; the sharded writer names files like save_pretrained.
 * Tested by tests/unit/test_safetensors.c (round trips, a Python-written fixture, bad inputs, a mutation loop). */
#ifndef LLAVA_SAFETENSORS_H
#define LLAVA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_MAX_HEADER_BYTES (100u * 1024u * 1024u) /* same limit as the Rust safetensors crate */
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

/** One tensor of an open file. `data` points into the read-only mapping and may be unaligned (safetensors does
 *  not align); read it with memcpy or st_tensor_to_f32. Valid until the file (or set) is closed. */
typedef struct {
    const char *name;
    dtype_t dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    const void *data;
    size_t nbytes;
} st_tensor_t;

typedef struct st_file st_file_t;
typedef struct st_set st_set_t;

/** Maps and validates `path`. Returns 0 and *out, LLAVA_EIO (cannot open/map), LLAVA_EFORMAT (malformed: one log
 *  line names the file, the tensor or key, and the problem) or LLAVA_ENOMEM. Close with st_file_close. */
int st_file_open(const char *path, st_file_t **out);
/** Unmaps and frees; sets *p to NULL. Safe on NULL. */
void st_file_close(st_file_t **p);
/** Number of tensors. */
int st_file_count(const st_file_t *f);
/** Tensor i (0 <= i < count) in name order (strcmp), or NULL. */
const st_tensor_t *st_file_at(const st_file_t *f, int i);
/** Tensor by name (binary search), or NULL. */
const st_tensor_t *st_file_find(const st_file_t *f, const char *name);
/** Value of a `__metadata__` key, or NULL. Owned by f. */
const char *st_file_metadata(const st_file_t *f, const char *key);
/** The path the file was opened with. */
const char *st_file_path(const st_file_t *f);

/** Elements of t (1 for a scalar). */
int64_t st_tensor_numel(const st_tensor_t *t);
/** Converts t (F32, F16, BF16, I64, I32, U8) to n floats. Returns 0, or LLAVA_ESHAPE when n != numel. */
int st_tensor_to_f32(const st_tensor_t *t, float *out, int64_t n);

/** Opens a model directory holding either model.safetensors.index.json + shards (preferred when present) or
 *  model.safetensors. Every weight_map entry must name an existing shard holding that tensor. Returns 0,
 *  LLAVA_ENOTFOUND (neither file, or a shard file missing), LLAVA_EFORMAT, LLAVA_EIO or LLAVA_ENOMEM. */
int st_set_open_dir(const char *dir, st_set_t **out);
void st_set_close(st_set_t **p);
int st_set_count(const st_set_t *s);
/** Tensor i across all shards, in name order, or NULL. */
const st_tensor_t *st_set_at(const st_set_t *s, int i);
const st_tensor_t *st_set_find(const st_set_t *s, const char *name);
/** A `metadata` key of the index (numbers are formatted as integers) or of model.safetensors' __metadata__. */
const char *st_set_metadata(const st_set_t *s, const char *key);

/** One tensor to write; data holds numel * dtype_size(dtype) little-endian bytes (may be NULL when that is 0). */
typedef struct {
    const char *name;
    dtype_t dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
} st_write_item_t;

/** Writes a safetensors file atomically (temp file in the same directory, fsync, rename). Layout as Python's
 *  safetensors: tensors ordered by dtype (widest first, in its Dtype enum order) then name, offsets contiguous,
 *  header JSON compact and padded with spaces to a multiple of 8, `__metadata__` first.
 *  metadata_json: a JSON object of string values (e.g. "{\"format\":\"pt\"}") or NULL.
 *  Returns 0, LLAVA_EINVAL (bad item or metadata), LLAVA_EIO, LLAVA_ENOSPACE or LLAVA_ENOMEM. */
int st_write(const char *path, const st_write_item_t *items, int n, const char *metadata_json);

/** Writes items into dir as save_pretrained does: model.safetensors when everything fits in max_shard_bytes, else
 *  model-0000i-of-0000N.safetensors (items split in the given order; a tensor larger than the limit gets its own
 *  shard) plus model.safetensors.index.json {"metadata": {"total_parameters", "total_size"}, "weight_map"}
 *  (indent 2, sorted keys). Each shard gets metadata_json. Returns as st_write. */
int st_write_sharded(const char *dir, const st_write_item_t *items, int n, size_t max_shard_bytes,
                     const char *metadata_json);

#ifdef __cplusplus
}
#endif

#endif
