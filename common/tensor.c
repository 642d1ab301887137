/* Dtype helpers and the tensor arena (see tensor.h). Names are looked up through a small open-addressing hash
 * because models have a few hundred tensors and loaders look each one up by name.
 * Tested by tests/unit/test_tensor.c. */
#include "common/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const struct {
    const char *name;
    size_t size;
} k_dtypes[DT_COUNT] = {
    [DT_F32] = {"F32", 4}, [DT_F16] = {"F16", 2}, [DT_BF16] = {"BF16", 2},
    [DT_I64] = {"I64", 8}, [DT_I32] = {"I32", 4}, [DT_U8] = {"U8", 1},
};

size_t dtype_size(dtype_t dt) { return (dt >= 0 && dt < DT_COUNT) ? k_dtypes[dt].size : 0; }
const char *dtype_name(dtype_t dt) { return (dt >= 0 && dt < DT_COUNT) ? k_dtypes[dt].name : "?"; }

int dtype_parse(const char *name, dtype_t *dt) {
    for (int i = 0; i < DT_COUNT; i++) {
        if (strcmp(name, k_dtypes[i].name) == 0) {
            *dt = (dtype_t)i;
            return 0;
        }
    }
    return LLAVA_EFORMAT;
}

float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((u >> 23) & 0xffu) - 127 + 15;
    uint32_t man = u & 0x7fffffu;
    if (((u >> 23) & 0xffu) == 0xffu) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0)); /* inf/NaN */
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);                                            /* overflow */
    if (exp <= 0) {                                                                              /* subnormal */
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = 1u << (shift - 1);
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (uint32_t)(exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++; /* may carry into the exponent: still correct */
    return (uint16_t)(sign | r);
}

int64_t tensor_numel(const tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

char *tensor_shape_str(const tensor_t *t, char *buf, size_t len) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, len - off, "[");
    for (int i = 0; i < t->ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
    return buf;
}

struct arena {
    char name[64];
    tensor_t *t;
    int n, cap;
    int *slots; /* hash of names -> index+1 (0 empty) */
    int nslots;
    size_t bytes;
    void *base;
};

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

arena_t *arena_new(const char *name) {
    arena_t *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    snprintf(a->name, sizeof a->name, "%s", name ? name : "arena");
    return a;
}

void arena_free(arena_t **pa) {
    if (!pa || !*pa) return;
    arena_t *a = *pa;
    free(a->base);
    free(a->t);
    free(a->slots);
    free(a);
    *pa = NULL;
}

static int arena_rehash(arena_t *a, int nslots) {
    int *slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots) return LLAVA_ENOMEM;
    for (int i = 0; i < a->n; i++) {
        uint64_t h = name_hash(a->t[i].name) & (uint64_t)(nslots - 1);
        while (slots[h]) h = (h + 1) & (uint64_t)(nslots - 1);
        slots[h] = i + 1;
    }
    free(a->slots);
    a->slots = slots;
    a->nslots = nslots;
    return 0;
}

tensor_t *arena_get(arena_t *a, const char *name) {
    if (!a || !a->nslots) return NULL;
    uint64_t h = name_hash(name) & (uint64_t)(a->nslots - 1);
    while (a->slots[h]) {
        tensor_t *t = &a->t[a->slots[h] - 1];
        if (strcmp(t->name, name) == 0) return t;
        h = (h + 1) & (uint64_t)(a->nslots - 1);
    }
    return NULL;
}

int arena_add(arena_t *a, const char *name, dtype_t dt, int ndim, const int64_t *shape) {
    if (a->base) {
        LOG_E("arena %s: cannot add '%s' after allocation", a->name, name);
        return LLAVA_EINVAL;
    }
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS || dtype_size(dt) == 0 || strlen(name) >= TENSOR_NAME_MAX) {
        LOG_E("arena %s: bad tensor '%s' (ndim %d, dtype %d)", a->name, name, ndim, (int)dt);
        return LLAVA_EINVAL;
    }
    if (arena_get(a, name)) {
        LOG_E("arena %s: duplicate tensor '%s'", a->name, name);
        return LLAVA_EINVAL;
    }
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 64;
        tensor_t *t = realloc(a->t, (size_t)cap * sizeof *t);
        if (!t) return LLAVA_ENOMEM;
        a->t = t;
        a->cap = cap;
    }
    tensor_t *t = &a->t[a->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            LOG_E("arena %s: tensor '%s' has negative dim %d", a->name, name, i);
            return LLAVA_EINVAL;
        }
        t->shape[i] = shape[i];
        numel *= shape[i];
    }
    t->nbytes = (size_t)numel * dtype_size(dt);
    t->offset = (a->bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    a->bytes = t->offset + t->nbytes;
    a->n++;
    if (a->n * 2 > a->nslots) {
        int rc = arena_rehash(a, a->nslots ? a->nslots * 2 : 128);
        if (rc) {
            a->n--;
            return rc;
        }
    } else {
        uint64_t h = name_hash(t->name) & (uint64_t)(a->nslots - 1);
        while (a->slots[h]) h = (h + 1) & (uint64_t)(a->nslots - 1);
        a->slots[h] = a->n;
    }
    return a->n - 1;
}

int arena_alloc(arena_t *a) {
    size_t bytes = (a->bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (bytes == 0) bytes = ARENA_ALIGN;
    void *p = aligned_alloc(ARENA_ALIGN, bytes);
    if (!p) {
        LOG_E("arena %s: out of memory allocating %zu bytes", a->name, bytes);
        return LLAVA_ENOMEM;
    }
    memset(p, 0, bytes);
    a->base = p;
    a->bytes = bytes;
    for (int i = 0; i < a->n; i++) a->t[i].data = (char *)p + a->t[i].offset;
    return 0;
}

int arena_count(const arena_t *a) { return a->n; }
tensor_t *arena_at(arena_t *a, int i) { return (i >= 0 && i < a->n) ? &a->t[i] : NULL; }
void *arena_data(arena_t *a) { return a->base; }
size_t arena_bytes(const arena_t *a) { return a->bytes; }
const char *arena_name(const arena_t *a) { return a->name; }

int64_t arena_numel(const arena_t *a) {
    int64_t n = 0;
    for (int i = 0; i < a->n; i++) n += tensor_numel(&a->t[i]);
    return n;
}
