/* Dtypes and the tensor arena: one allocation per group (parameters, gradients, optimizer state, activations)
 * with named views into it, laid out the same on every backend so one call can all-reduce a whole group.
 * Tested by tests/unit/test_tensor.c. */
#ifndef LLAVA_TENSOR_H
#define LLAVA_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TENSOR_MAX_DIMS 8
#define TENSOR_NAME_MAX 160
#define ARENA_ALIGN 64

typedef enum { DT_F32 = 0, DT_F16, DT_BF16, DT_I64, DT_I32, DT_U8, DT_COUNT } dtype_t;

/** Bytes per element of dt (0 for an invalid dtype). */
size_t dtype_size(dtype_t dt);
/** Safetensors name of dt ("F32", "BF16" ...). */
const char *dtype_name(dtype_t dt);
/** Parses a safetensors dtype name; returns 0 and sets *dt, or LLAVA_EFORMAT for an unknown or unsupported name. */
int dtype_parse(const char *name, dtype_t *dt);

/* bf16/f16 <-> f32 conversions (round to nearest even). */
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/** A view of one tensor: points into an arena or a mapped file; does not own data. */
typedef struct {
    char name[TENSOR_NAME_MAX];
    dtype_t dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    size_t offset; /* bytes from the arena's base */
    size_t nbytes;
    void *data;    /* NULL until the arena is allocated */
} tensor_t;

/** Number of elements of t (1 for a scalar with ndim 0). */
int64_t tensor_numel(const tensor_t *t);
/** Formats the shape as "[2, 3, 4]" into buf. Returns buf. */
char *tensor_shape_str(const tensor_t *t, char *buf, size_t len);

typedef struct arena arena_t;

/** Creates an empty arena named `name` (for messages). Returns NULL when out of memory. Free with arena_free. */
arena_t *arena_new(const char *name);
/** Frees the arena, its allocation and views; sets *pa to NULL. Safe on NULL. */
void arena_free(arena_t **pa);
/** Plans a tensor (before arena_alloc). Returns its index >= 0, or a negative LLAVA_E* code (duplicate name,
 *  too many dims, allocation already made). Each tensor starts at an ARENA_ALIGN boundary. */
int arena_add(arena_t *a, const char *name, dtype_t dt, int ndim, const int64_t *shape);
/** Makes the one allocation (zero-filled) and points every view into it. Returns 0 or LLAVA_ENOMEM. */
int arena_alloc(arena_t *a);
/** Number of tensors. */
int arena_count(const arena_t *a);
/** Tensor by index (0 <= i < count), or NULL. The pointer stays valid until arena_free. */
tensor_t *arena_at(arena_t *a, int i);
/** Tensor by name, or NULL. */
tensor_t *arena_get(arena_t *a, const char *name);
/** Base of the allocation (NULL before arena_alloc) and its size in bytes (including alignment padding). */
void *arena_data(arena_t *a);
size_t arena_bytes(const arena_t *a);
/** Total elements of all tensors (they all share one dtype when the arena holds a single float group). */
int64_t arena_numel(const arena_t *a);
const char *arena_name(const arena_t *a);

#ifdef __cplusplus
}
#endif

#endif
