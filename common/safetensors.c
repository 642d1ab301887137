/* Safetensors reader (mmap + validated header), sharded model directories, and the atomic writer (see
 * safetensors.h). Tested by tests/unit/test_safetensors.c; tests/fuzz/fuzz_safetensors.c fuzzes st_file_open. */
#include "common/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

struct st_file {
    char *path;
    void *map;
    size_t map_len;
    st_tensor_t *tensors; /* sorted by name */
    int count;
    char **meta_keys;
    char **meta_vals;
    int meta_count;
};

struct st_set {
    st_file_t **files;
    int nfiles;
    const st_tensor_t **tensors; /* sorted by name */
    int count;
    char **meta_keys;
    char **meta_vals;
    int meta_count;
};

/* ---------------------------------------------------------------- reader */

static uint64_t get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor_t *)a)->name, ((const st_tensor_t *)b)->name);
}

/* A JSON number that is an exact integer in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || floor(d) != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static void shape_str(const st_tensor_t *t, char *buf, size_t len) {
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (n < len) snprintf(buf + n, len - n, "]");
}

/* Parses one tensor entry `j` into t (name already set); data_len is the size of the data section. */
static int parse_entry(const char *path, const cJSON *j, st_tensor_t *t, const uint8_t *data, size_t data_len,
                       uint64_t *begin_out) {
    int rc = 0;
    const char *nm = t->name;
    CHECK_GOTO(cJSON_IsObject(j), LLAVA_EFORMAT, "%s: tensor '%s': entry is not a JSON object", path, nm);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    CHECK_GOTO(cJSON_IsString(jd), LLAVA_EFORMAT, "%s: tensor '%s': missing or non-string dtype", path, nm);
    CHECK_GOTO(dtype_parse(jd->valuestring, &t->dtype) == 0, LLAVA_EFORMAT,
               "%s: tensor '%s': unsupported dtype '%.32s' (supported: F32 F16 BF16 I64 I32 U8)", path, nm,
               jd->valuestring);
    CHECK_GOTO(cJSON_IsArray(js), LLAVA_EFORMAT, "%s: tensor '%s': missing or non-array shape", path, nm);
    int nd = cJSON_GetArraySize(js);
    CHECK_GOTO(nd <= TENSOR_MAX_DIMS, LLAVA_EFORMAT, "%s: tensor '%s': shape has %d dims (max %d)", path, nm, nd,
               TENSOR_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int zero = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        CHECK_GOTO(json_uint(cJSON_GetArrayItem(js, i), &d), LLAVA_EFORMAT,
                   "%s: tensor '%s': shape[%d] is not a non-negative integer", path, nm, i);
        t->shape[i] = (int64_t)d;
        if (d == 0) zero = 1;
        else if (!zero) {
            CHECK_GOTO(numel <= (uint64_t)INT64_MAX / d, LLAVA_EFORMAT, "%s: tensor '%s': shape overflows", path,
                       nm);
            numel *= d;
        }
    }
    if (zero) numel = 0;
    uint64_t esz = dtype_size(t->dtype);
    CHECK_GOTO(numel <= (uint64_t)INT64_MAX / esz, LLAVA_EFORMAT, "%s: tensor '%s': shape overflows", path, nm);
    uint64_t want = numel * esz, b, e;
    CHECK_GOTO(cJSON_IsArray(jo) && cJSON_GetArraySize(jo) == 2 && json_uint(cJSON_GetArrayItem(jo, 0), &b) &&
                   json_uint(cJSON_GetArrayItem(jo, 1), &e),
               LLAVA_EFORMAT, "%s: tensor '%s': missing data_offsets or not two non-negative integers", path, nm);
    CHECK_GOTO(b <= e && e <= data_len, LLAVA_EFORMAT,
               "%s: tensor '%s': data_offsets [%llu, %llu] outside the data section of %zu bytes", path, nm,
               (unsigned long long)b, (unsigned long long)e, data_len);
    if (e - b != want) {
        char sh[256];
        shape_str(t, sh, sizeof sh);
        CHECK_GOTO(0, LLAVA_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] do not match shape %s x %s = %llu bytes",
                   path, nm, (unsigned long long)b, (unsigned long long)e, sh, dtype_name(t->dtype),
                   (unsigned long long)want);
    }
    t->data = data + b;
    t->nbytes = (size_t)want;
    *begin_out = b;
cleanup:
    return rc;
}

static int parse_metadata(st_file_t *f, const cJSON *j) {
    int rc = 0;
    CHECK_GOTO(cJSON_IsObject(j), LLAVA_EFORMAT, "%s: __metadata__ is not a JSON object", f->path);
    int n = cJSON_GetArraySize(j);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    ALLOC_CHECK_GOTO(f->meta_keys);
    ALLOC_CHECK_GOTO(f->meta_vals);
    for (const cJSON *m = j->child; m; m = m->next) {
        CHECK_GOTO(cJSON_IsString(m), LLAVA_EFORMAT, "%s: __metadata__ key '%s': value is not a string", f->path,
                   m->string);
        f->meta_keys[f->meta_count] = strdup(m->string);
        f->meta_vals[f->meta_count] = strdup(m->valuestring);
        f->meta_count++;
        ALLOC_CHECK_GOTO(f->meta_keys[f->meta_count - 1]);
        ALLOC_CHECK_GOTO(f->meta_vals[f->meta_count - 1]);
    }
cleanup:
    return rc;
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} span_t;

static int cmp_span(const void *a, const void *b) {
    const span_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* Tensors must not share bytes (zero-size tensors own none). */
static int check_overlap(const st_file_t *f) {
    int rc = 0, n = 0;
    span_t *sp = malloc(((size_t)f->count + 1) * sizeof *sp);
    ALLOC_CHECK_GOTO(sp);
    const uint8_t *base = (const uint8_t *)f->map;
    for (int i = 0; i < f->count; i++) {
        const st_tensor_t *t = &f->tensors[i];
        if (t->nbytes == 0) continue;
        uint64_t b = (uint64_t)((const uint8_t *)t->data - base);
        sp[n++] = (span_t){b, b + t->nbytes, t->name};
    }
    qsort(sp, (size_t)n, sizeof *sp, cmp_span);
    for (int i = 1; i < n; i++)
        CHECK_GOTO(sp[i].begin >= sp[i - 1].end, LLAVA_EFORMAT, "%s: tensor '%s': data overlaps tensor '%s'",
                   f->path, sp[i].name, sp[i - 1].name);
cleanup:
    free(sp);
    return rc;
}

static int parse_header(st_file_t *f, const char *hdr, size_t hlen, const uint8_t *data, size_t data_len) {
    int rc = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
    CHECK_GOTO(root != NULL, LLAVA_EFORMAT, "%s: header is not valid JSON (error near byte %td)", f->path,
               (cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - hdr : (ptrdiff_t)-1));
    CHECK_GOTO(cJSON_IsObject(root), LLAVA_EFORMAT, "%s: header is not a JSON object", f->path);
    for (const char *p = end; p < hdr + hlen; p++)
        CHECK_GOTO(*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r', LLAVA_EFORMAT,
                   "%s: header has trailing bytes after the JSON object", f->path);
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    ALLOC_CHECK_GOTO(f->tensors);
    for (const cJSON *j = root->child; j; j = j->next) {
        if (strcmp(j->string, "__metadata__") == 0) {
            CHECK_GOTO(f->meta_keys == NULL, LLAVA_EFORMAT, "%s: __metadata__ appears twice", f->path);
            RC_CHECK_GOTO(parse_metadata(f, j));
            continue;
        }
        st_tensor_t *t = &f->tensors[f->count];
        t->name = strdup(j->string);
        ALLOC_CHECK_GOTO(t->name);
        f->count++;
        uint64_t begin;
        RC_CHECK_GOTO(parse_entry(f->path, j, t, data, data_len, &begin));
    }
    qsort(f->tensors, (size_t)f->count, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 1; i < f->count; i++)
        CHECK_GOTO(strcmp(f->tensors[i].name, f->tensors[i - 1].name) != 0, LLAVA_EFORMAT,
                   "%s: tensor '%s': appears twice in the header", f->path, f->tensors[i].name);
    RC_CHECK_GOTO(check_overlap(f));
cleanup:
    cJSON_Delete(root);
    return rc;
}

int st_file_open(const char *path, st_file_t **out) {
    int rc = 0, fd = -1;
    st_file_t *f = NULL;
    *out = NULL;
    f = calloc(1, sizeof *f);
    ALLOC_CHECK_GOTO(f);
    f->path = strdup(path);
    ALLOC_CHECK_GOTO(f->path);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK_GOTO(fd >= 0, errno == ENOENT ? LLAVA_ENOTFOUND : LLAVA_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    SYS_CHECK_GOTO(fstat(fd, &sb), path);
    CHECK_GOTO(S_ISREG(sb.st_mode), LLAVA_EFORMAT, "%s: not a regular file", path);
    size_t size = (size_t)sb.st_size;
    CHECK_GOTO(size >= 8, LLAVA_EFORMAT, "%s: file is %zu bytes, too short for the 8-byte header length", path,
               size);
    f->map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK_GOTO(f->map != MAP_FAILED, LLAVA_EIO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(errno));
    f->map_len = size;
    const uint8_t *base = f->map;
    uint64_t hlen = get_le64(base);
    CHECK_GOTO(hlen <= ST_MAX_HEADER_BYTES, LLAVA_EFORMAT, "%s: header length %llu exceeds the limit of %u bytes",
               path, (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
    CHECK_GOTO(hlen <= size - 8, LLAVA_EFORMAT, "%s: header length %llu runs past the end of the %zu-byte file",
               path, (unsigned long long)hlen, size);
    CHECK_GOTO(hlen >= 2 && base[8] == '{', LLAVA_EFORMAT, "%s: header does not start with a JSON object", path);
    RC_CHECK_GOTO(parse_header(f, (const char *)base + 8, (size_t)hlen, base + 8 + hlen, size - 8 - (size_t)hlen));
    *out = f;
    f = NULL;
cleanup:
    if (fd >= 0) close(fd);
    st_file_close(&f);
    return rc;
}

void st_file_close(st_file_t **p) {
    if (!p || !*p) return;
    st_file_t *f = *p;
    if (f->map && f->map != MAP_FAILED) munmap(f->map, f->map_len);
    for (int i = 0; i < f->count; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->meta_count; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    free(f);
    *p = NULL;
}

int st_file_count(const st_file_t *f) { return f ? f->count : 0; }
const char *st_file_path(const st_file_t *f) { return f->path; }

const st_tensor_t *st_file_at(const st_file_t *f, int i) {
    return (f && i >= 0 && i < f->count) ? &f->tensors[i] : NULL;
}

const st_tensor_t *st_file_find(const st_file_t *f, const char *name) {
    if (!f || !name) return NULL;
    st_tensor_t key = {.name = name};
    return bsearch(&key, f->tensors, (size_t)f->count, sizeof *f->tensors, cmp_tensor_name);
}

static const char *meta_lookup(char **keys, char **vals, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (strcmp(keys[i], key) == 0) return vals[i];
    return NULL;
}

const char *st_file_metadata(const st_file_t *f, const char *key) {
    return f ? meta_lookup(f->meta_keys, f->meta_vals, f->meta_count, key) : NULL;
}

int64_t st_tensor_numel(const st_tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int st_tensor_to_f32(const st_tensor_t *t, float *out, int64_t n) {
    int rc = 0;
    int64_t numel = st_tensor_numel(t);
    CHECK_GOTO(n == numel, LLAVA_ESHAPE, "tensor '%s': asked for %lld floats, it has %lld elements", t->name,
               (long long)n, (long long)numel);
    const uint8_t *p = t->data;
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case DT_F32: memcpy(&out[i], p + 4 * i, 4); break;
        case DT_F16: {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = f16_to_f32(h);
        } break;
        case DT_BF16: {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        } break;
        case DT_I64: {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        } break;
        case DT_I32: {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = (float)v;
        } break;
        case DT_U8: out[i] = (float)p[i]; break;
        default: CHECK_GOTO(0, LLAVA_EINVAL, "tensor '%s': bad dtype %d", t->name, (int)t->dtype);
        }
    }
cleanup:
    return rc;
}

/* ---------------------------------------------------------------- sharded sets */

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int cmp_tensor_ptr(const void *a, const void *b) {
    return strcmp((*(const st_tensor_t *const *)a)->name, (*(const st_tensor_t *const *)b)->name);
}

static int set_copy_meta(st_set_t *s, char **keys, char **vals, int n) {
    int rc = 0;
    s->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    s->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    ALLOC_CHECK_GOTO(s->meta_keys);
    ALLOC_CHECK_GOTO(s->meta_vals);
    for (int i = 0; i < n; i++) {
        s->meta_keys[i] = strdup(keys[i]);
        s->meta_vals[i] = strdup(vals[i]);
        s->meta_count++;
        ALLOC_CHECK_GOTO(s->meta_keys[i]);
        ALLOC_CHECK_GOTO(s->meta_vals[i]);
    }
cleanup:
    return rc;
}

static int set_open_single(st_set_t *s, const char *path) {
    int rc = 0;
    s->files = calloc(1, sizeof *s->files);
    ALLOC_CHECK_GOTO(s->files);
    RC_CHECK_GOTO(st_file_open(path, &s->files[0]));
    s->nfiles = 1;
    st_file_t *f = s->files[0];
    s->tensors = calloc((size_t)f->count + 1, sizeof *s->tensors);
    ALLOC_CHECK_GOTO(s->tensors);
    for (int i = 0; i < f->count; i++) s->tensors[i] = &f->tensors[i];
    s->count = f->count;
    RC_CHECK_GOTO(set_copy_meta(s, f->meta_keys, f->meta_vals, f->meta_count));
cleanup:
    return rc;
}

static int read_text_file(const char *path, char **out) {
    int rc = 0;
    FILE *fp = fopen(path, "rb");
    char *buf = NULL;
    *out = NULL;
    CHECK_GOTO(fp != NULL, errno == ENOENT ? LLAVA_ENOTFOUND : LLAVA_EIO, "%s: cannot open: %s", path,
               strerror(errno));
    SYS_CHECK_GOTO(fseek(fp, 0, SEEK_END), path);
    long n = ftell(fp);
    SYS_CHECK_GOTO(n, path);
    CHECK_GOTO(n <= (long)ST_MAX_HEADER_BYTES, LLAVA_EFORMAT, "%s: %ld bytes is too large", path, n);
    rewind(fp);
    buf = malloc((size_t)n + 1);
    ALLOC_CHECK_GOTO(buf);
    CHECK_GOTO(fread(buf, 1, (size_t)n, fp) == (size_t)n, LLAVA_EIO, "%s: short read", path);
    buf[n] = 0;
    *out = buf;
    buf = NULL;
cleanup:
    free(buf);
    if (fp) fclose(fp);
    return rc;
}

/* Opens shard `file` (or finds it already open) and returns its index in s->files. */
static int set_shard(st_set_t *s, const char *dir, const char *index_path, const char *file, int *idx) {
    int rc = 0;
    char *path = NULL;
    CHECK_GOTO(file[0] && !strchr(file, '/') && strcmp(file, "..") != 0, LLAVA_EFORMAT,
               "%s: weight_map names '%s', which is not a plain file name in the directory", index_path, file);
    path = path_join(dir, file);
    ALLOC_CHECK_GOTO(path);
    for (int i = 0; i < s->nfiles; i++)
        if (strcmp(s->files[i]->path, path) == 0) {
            *idx = i;
            goto cleanup;
        }
    CHECK_GOTO(access(path, F_OK) == 0, LLAVA_ENOTFOUND, "%s: weight_map names shard '%s', which does not exist",
               index_path, file);
    RC_CHECK_GOTO(st_file_open(path, &s->files[s->nfiles]));
    *idx = s->nfiles++;
cleanup:
    free(path);
    return rc;
}

static int set_index_meta(st_set_t *s, const char *index_path, const cJSON *meta) {
    int rc = 0;
    if (!meta || cJSON_IsNull(meta)) return 0;
    CHECK_GOTO(cJSON_IsObject(meta), LLAVA_EFORMAT, "%s: metadata is not a JSON object", index_path);
    int n = cJSON_GetArraySize(meta);
    s->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    s->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    ALLOC_CHECK_GOTO(s->meta_keys);
    ALLOC_CHECK_GOTO(s->meta_vals);
    for (const cJSON *m = meta->child; m; m = m->next) {
        char num[64];
        const char *v = NULL;
        if (cJSON_IsString(m)) v = m->valuestring;
        else if (cJSON_IsNumber(m)) {
            snprintf(num, sizeof num, "%.17g", m->valuedouble);
            v = num;
        } else continue; /* nested values are not ours to interpret */
        s->meta_keys[s->meta_count] = strdup(m->string);
        s->meta_vals[s->meta_count] = strdup(v);
        s->meta_count++;
        ALLOC_CHECK_GOTO(s->meta_keys[s->meta_count - 1]);
        ALLOC_CHECK_GOTO(s->meta_vals[s->meta_count - 1]);
    }
cleanup:
    return rc;
}

static int set_open_index(st_set_t *s, const char *dir, const char *index_path) {
    int rc = 0;
    char *text = NULL;
    cJSON *root = NULL;
    RC_CHECK_GOTO(read_text_file(index_path, &text));
    root = cJSON_Parse(text);
    CHECK_GOTO(cJSON_IsObject(root), LLAVA_EFORMAT, "%s: not a JSON object", index_path);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    CHECK_GOTO(cJSON_IsObject(wm), LLAVA_EFORMAT, "%s: weight_map missing or not an object", index_path);
    RC_CHECK_GOTO(set_index_meta(s, index_path, cJSON_GetObjectItemCaseSensitive(root, "metadata")));
    int n = cJSON_GetArraySize(wm);
    s->files = calloc((size_t)n + 1, sizeof *s->files);
    s->tensors = calloc((size_t)n + 1, sizeof *s->tensors);
    ALLOC_CHECK_GOTO(s->files);
    ALLOC_CHECK_GOTO(s->tensors);
    for (const cJSON *e = wm->child; e; e = e->next) {
        CHECK_GOTO(cJSON_IsString(e), LLAVA_EFORMAT, "%s: weight_map tensor '%s': file name is not a string",
                   index_path, e->string);
        int idx;
        RC_CHECK_GOTO(set_shard(s, dir, index_path, e->valuestring, &idx));
        const st_tensor_t *t = st_file_find(s->files[idx], e->string);
        CHECK_GOTO(t != NULL, LLAVA_EFORMAT, "%s: weight_map tensor '%s': not present in shard '%s'", index_path,
                   e->string, e->valuestring);
        s->tensors[s->count++] = t;
    }
    qsort(s->tensors, (size_t)s->count, sizeof *s->tensors, cmp_tensor_ptr);
    for (int i = 1; i < s->count; i++)
        CHECK_GOTO(strcmp(s->tensors[i]->name, s->tensors[i - 1]->name) != 0, LLAVA_EFORMAT,
                   "%s: weight_map tensor '%s': appears twice", index_path, s->tensors[i]->name);
cleanup:
    cJSON_Delete(root);
    free(text);
    return rc;
}

int st_set_open_dir(const char *dir, st_set_t **out) {
    int rc = 0;
    char *index = NULL, *single = NULL;
    st_set_t *s = NULL;
    *out = NULL;
    s = calloc(1, sizeof *s);
    ALLOC_CHECK_GOTO(s);
    index = path_join(dir, ST_INDEX_NAME);
    single = path_join(dir, ST_SINGLE_NAME);
    ALLOC_CHECK_GOTO(index);
    ALLOC_CHECK_GOTO(single);
    if (access(index, F_OK) == 0) {
        RC_CHECK_GOTO(set_open_index(s, dir, index));
    } else {
        CHECK_GOTO(access(single, F_OK) == 0, LLAVA_ENOTFOUND, "%s: holds neither %s nor %s", dir, ST_SINGLE_NAME,
                   ST_INDEX_NAME);
        RC_CHECK_GOTO(set_open_single(s, single));
    }
    *out = s;
    s = NULL;
cleanup:
    free(index);
    free(single);
    st_set_close(&s);
    return rc;
}

void st_set_close(st_set_t **p) {
    if (!p || !*p) return;
    st_set_t *s = *p;
    for (int i = 0; i < s->nfiles; i++) st_file_close(&s->files[i]);
    free(s->files);
    free(s->tensors);
    for (int i = 0; i < s->meta_count; i++) {
        free(s->meta_keys[i]);
        free(s->meta_vals[i]);
    }
    free(s->meta_keys);
    free(s->meta_vals);
    free(s);
    *p = NULL;
}

int st_set_count(const st_set_t *s) { return s ? s->count : 0; }

const st_tensor_t *st_set_at(const st_set_t *s, int i) {
    return (s && i >= 0 && i < s->count) ? s->tensors[i] : NULL;
}

const st_tensor_t *st_set_find(const st_set_t *s, const char *name) {
    if (!s || !name) return NULL;
    st_tensor_t key = {.name = name};
    const st_tensor_t *kp = &key;
    const st_tensor_t *const *r = bsearch(&kp, s->tensors, (size_t)s->count, sizeof *s->tensors, cmp_tensor_ptr);
    return r ? *r : NULL;
}

const char *st_set_metadata(const st_set_t *s, const char *key) {
    return s ? meta_lookup(s->meta_keys, s->meta_vals, s->meta_count, key) : NULL;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void sb_str(sbuf_t *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string as serde_json writes it: escapes " \ and control characters, UTF-8 passed through. */
static void sb_json_str(sbuf_t *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_str(b, "\\\""); break;
        case '\\': sb_str(b, "\\\\"); break;
        case '\n': sb_str(b, "\\n"); break;
        case '\r': sb_str(b, "\\r"); break;
        case '\t': sb_str(b, "\\t"); break;
        case '\b': sb_str(b, "\\b"); break;
        case '\f': sb_str(b, "\\f"); break;
        default:
            if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
            else sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* Position of each dtype in the Rust crate's Dtype enum; it writes wider (later) dtypes first. */
static int dtype_rank(dtype_t dt) {
    switch (dt) {
    case DT_U8: return 0;
    case DT_F16: return 1;
    case DT_BF16: return 2;
    case DT_I32: return 3;
    case DT_F32: return 4;
    case DT_I64: return 5;
    default: return -1;
    }
}

static int cmp_item_order(const void *a, const void *b) {
    const st_write_item_t *x = *(const st_write_item_t *const *)a, *y = *(const st_write_item_t *const *)b;
    int rx = dtype_rank(x->dtype), ry = dtype_rank(y->dtype);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

static int cmp_item_name(const void *a, const void *b) {
    return strcmp((*(const st_write_item_t *const *)a)->name, (*(const st_write_item_t *const *)b)->name);
}

static size_t item_bytes(const st_write_item_t *it) {
    size_t n = dtype_size(it->dtype);
    for (int i = 0; i < it->ndim; i++) n *= (size_t)it->shape[i];
    return n;
}

static int64_t item_numel(const st_write_item_t *it) {
    int64_t n = 1;
    for (int i = 0; i < it->ndim; i++) n *= it->shape[i];
    return n;
}

static int check_items(const char *path, const st_write_item_t *items, int n) {
    int rc = 0;
    CHECK_GOTO(n >= 0 && (n == 0 || items), LLAVA_EINVAL, "%s: st_write: bad item list", path);
    for (int i = 0; i < n; i++) {
        const st_write_item_t *it = &items[i];
        CHECK_GOTO(it->name && it->name[0] && strcmp(it->name, "__metadata__") != 0, LLAVA_EINVAL,
                   "%s: item %d: missing or reserved name", path, i);
        CHECK_GOTO(dtype_rank(it->dtype) >= 0, LLAVA_EINVAL, "%s: tensor '%s': bad dtype %d", path, it->name,
                   (int)it->dtype);
        CHECK_GOTO(it->ndim >= 0 && it->ndim <= TENSOR_MAX_DIMS && (it->ndim == 0 || it->shape), LLAVA_EINVAL,
                   "%s: tensor '%s': bad ndim %d", path, it->name, it->ndim);
        for (int d = 0; d < it->ndim; d++)
            CHECK_GOTO(it->shape[d] >= 0, LLAVA_EINVAL, "%s: tensor '%s': negative shape[%d]", path, it->name, d);
        CHECK_GOTO(it->data || item_bytes(it) == 0, LLAVA_EINVAL, "%s: tensor '%s': NULL data", path, it->name);
    }
cleanup:
    return rc;
}

/* The compact `"__metadata__":{...},` prefix from a JSON object of strings, or "" for NULL. */
static int metadata_prefix(const char *path, const char *metadata_json, sbuf_t *b) {
    int rc = 0;
    cJSON *m = NULL;
    if (!metadata_json) return 0;
    m = cJSON_Parse(metadata_json);
    CHECK_GOTO(cJSON_IsObject(m), LLAVA_EINVAL, "%s: metadata is not a JSON object", path);
    sb_str(b, "\"__metadata__\":{");
    for (const cJSON *e = m->child; e; e = e->next) {
        CHECK_GOTO(cJSON_IsString(e), LLAVA_EINVAL, "%s: metadata key '%s': value is not a string", path, e->string);
        sb_json_str(b, e->string);
        sb_put(b, ":", 1);
        sb_json_str(b, e->valuestring);
        if (e->next) sb_put(b, ",", 1);
    }
    sb_str(b, "},");
cleanup:
    cJSON_Delete(m);
    return rc;
}

static int write_all(int fd, const void *buf, size_t n, const char *what) {
    int rc = 0;
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        SYS_CHECK_GOTO(w, what);
        p += w;
        n -= (size_t)w;
    }
cleanup:
    return rc;
}

/* Writes chunks to a temp file next to path, fsyncs it, renames it over path and fsyncs the directory. */
static int write_atomic(const char *path, const void *const *chunks, const size_t *lens, int nchunks) {
    int rc = 0, fd = -1;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    char *dir = strdup(path);
    ALLOC_CHECK_GOTO(tmp);
    ALLOC_CHECK_GOTO(dir);
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp);
    CHECK_GOTO(fd >= 0, errno == ENOSPC ? LLAVA_ENOSPACE : LLAVA_EIO, "%s: cannot create temp file: %s", path,
               strerror(errno));
    SYS_CHECK_GOTO(fchmod(fd, 0644), tmp);
    for (int i = 0; i < nchunks; i++) RC_CHECK_GOTO(write_all(fd, chunks[i], lens[i], tmp));
    SYS_CHECK_GOTO(fsync(fd), tmp);
    int cfd = fd;
    fd = -1;
    SYS_CHECK_GOTO(close(cfd), tmp);
    SYS_CHECK_GOTO(rename(tmp, path), path);
    tmp[0] = 0;
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd); /* best effort: some filesystems refuse fsync on a directory */
        close(dfd);
    }
cleanup:
    if (fd >= 0) close(fd);
    if (tmp && tmp[0] && rc != 0) unlink(tmp);
    free(tmp);
    free(dir);
    return rc;
}

int st_write(const char *path, const st_write_item_t *items, int n, const char *metadata_json) {
    int rc = 0;
    const st_write_item_t **ord = NULL;
    const void **chunks = NULL;
    size_t *lens = NULL;
    sbuf_t h = {0};
    RC_CHECK_GOTO(check_items(path, items, n));
    ord = malloc(((size_t)n + 1) * sizeof *ord);
    chunks = malloc(((size_t)n + 2) * sizeof *chunks);
    lens = malloc(((size_t)n + 2) * sizeof *lens);
    ALLOC_CHECK_GOTO(ord);
    ALLOC_CHECK_GOTO(chunks);
    ALLOC_CHECK_GOTO(lens);
    for (int i = 0; i < n; i++) ord[i] = &items[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_item_name);
    for (int i = 1; i < n; i++)
        CHECK_GOTO(strcmp(ord[i]->name, ord[i - 1]->name) != 0, LLAVA_EINVAL, "%s: tensor '%s': given twice", path,
                   ord[i]->name);
    qsort(ord, (size_t)n, sizeof *ord, cmp_item_order);
    sb_put(&h, "12345678{", 9); /* length placeholder */
    RC_CHECK_GOTO(metadata_prefix(path, metadata_json, &h));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const st_write_item_t *it = ord[i];
        size_t nb = item_bytes(it);
        sb_json_str(&h, it->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(it->dtype));
        for (int d = 0; d < it->ndim; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)it->shape[d]);
        sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
        if (i + 1 < n) sb_put(&h, ",", 1);
        chunks[i + 1] = it->data;
        lens[i + 1] = nb;
        off += nb;
    }
    if (h.len > 0 && h.buf[h.len - 1] == ',') h.len--; /* metadata only: drop its trailing comma */
    sb_put(&h, "}", 1);
    while ((h.len - 8) % 8) sb_put(&h, " ", 1);
    CHECK_GOTO(!h.oom, LLAVA_ENOMEM, "%s: out of memory building the header", path);
    uint64_t hl = h.len - 8;
    for (int i = 0; i < 8; i++) h.buf[i] = (char)(uint8_t)(hl >> (8 * i));
    chunks[0] = h.buf;
    lens[0] = h.len;
    RC_CHECK_GOTO(write_atomic(path, chunks, lens, n + 1));
cleanup:
    free(h.buf);
    free(ord);
    free(chunks);
    free(lens);
    return rc;
}

static int write_index(const char *dir, const st_write_item_t *items, int n, const int *shard_of, int nshards) {
    int rc = 0;
    char *path = NULL;
    const st_write_item_t **ord = NULL;
    sbuf_t b = {0};
    int64_t params = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        params += item_numel(&items[i]);
        total += item_bytes(&items[i]);
    }
    ord = malloc(((size_t)n + 1) * sizeof *ord);
    ALLOC_CHECK_GOTO(ord);
    for (int i = 0; i < n; i++) ord[i] = &items[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_item_name);
    /* json.dumps(index, indent=2, sort_keys=True) + "\n", as transformers writes it */
    sb_printf(&b, "{\n  \"metadata\": {\n    \"total_parameters\": %lld,\n    \"total_size\": %zu\n  },\n",
              (long long)params, total);
    sb_str(&b, "  \"weight_map\": {");
    for (int i = 0; i < n; i++) {
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", shard_of[ord[i] - items] + 1, nshards);
        sb_str(&b, i ? ",\n    " : "\n    ");
        sb_json_str(&b, ord[i]->name);
        sb_str(&b, ": ");
        sb_json_str(&b, fname);
    }
    sb_str(&b, n ? "\n  }\n}\n" : "}\n}\n");
    CHECK_GOTO(!b.oom, LLAVA_ENOMEM, "%s: out of memory building the index", dir);
    path = path_join(dir, ST_INDEX_NAME);
    ALLOC_CHECK_GOTO(path);
    const void *chunk = b.buf;
    RC_CHECK_GOTO(write_atomic(path, &chunk, &b.len, 1));
cleanup:
    free(path);
    free(ord);
    free(b.buf);
    return rc;
}

int st_write_sharded(const char *dir, const st_write_item_t *items, int n, size_t max_shard_bytes,
                     const char *metadata_json) {
    int rc = 0, nshards = 0;
    int *shard_of = NULL, *pos = NULL;
    st_write_item_t *sub = NULL;
    char *path = NULL;
    RC_CHECK_GOTO(check_items(dir, items, n));
    shard_of = malloc(((size_t)n + 1) * sizeof *shard_of);
    sub = malloc(((size_t)n + 1) * sizeof *sub);
    pos = malloc(((size_t)n + 1) * sizeof *pos);
    ALLOC_CHECK_GOTO(shard_of);
    ALLOC_CHECK_GOTO(sub);
    ALLOC_CHECK_GOTO(pos);
    /* huggingface_hub split_state_dict_into_shards: items in order; a tensor larger than the limit is appended
     * as its own shard at once, the open shard when the next tensor does not fit or at the end. */
    int ntmp = 0, cur = -1;
    size_t cur_bytes = 0;
    for (int i = 0; i < n; i++) {
        size_t sz = item_bytes(&items[i]);
        if (sz > max_shard_bytes) {
            pos[ntmp] = nshards++;
            shard_of[i] = ntmp++;
            continue;
        }
        if (cur >= 0 && cur_bytes + sz > max_shard_bytes) {
            pos[cur] = nshards++;
            cur = -1;
        }
        if (cur < 0) {
            cur = ntmp++;
            cur_bytes = 0;
        }
        shard_of[i] = cur;
        cur_bytes += sz;
    }
    if (cur >= 0) pos[cur] = nshards++;
    for (int i = 0; i < n; i++) shard_of[i] = pos[shard_of[i]];
    if (nshards <= 1) {
        path = path_join(dir, ST_SINGLE_NAME);
        ALLOC_CHECK_GOTO(path);
        RC_CHECK_GOTO(st_write(path, items, n, metadata_json));
        goto cleanup;
    }
    for (int s = 0; s < nshards; s++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s) sub[m++] = items[i];
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        free(path);
        path = path_join(dir, fname);
        ALLOC_CHECK_GOTO(path);
        RC_CHECK_GOTO(st_write(path, sub, m, metadata_json));
    }
    RC_CHECK_GOTO(write_index(dir, items, n, shard_of, nshards));
cleanup:
    free(path);
    free(shard_of);
    free(pos);
    free(sub);
    return rc;
}
