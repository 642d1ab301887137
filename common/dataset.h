/* Dataset records, manifest and the LMDB shard reader + collate that workers call (DESIGN.md data flow 1 and 3).
 * The byte layout of records, shards and manifest.json is in docs/dataset-format.md.
 * Tested by tests/unit/test_dataset.c and tests/integration/ingest.sh. */
#ifndef LLAVA_DATASET_H
#define LLAVA_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "common/batch.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DS_FORMAT_VERSION 1
#define DS_RECORD_MAGIC 0x5244564CU /* "LVDR" read as little-endian bytes */
#define DS_RECORD_VERSION 1
#define DS_HEADER_BYTES 32
#define DS_ID_MAX 255 /* longer ids are cut (UTF-8 safe) when a record is encoded */
#define DS_PATCH_SIZE 14

enum { DS_FLAG_HAS_IMAGE = 1, DS_FLAG_PAD = 2 };

/** A decoded record. From ds_record_decode/ds_reader_get it is a zero-copy view: the pointers point into the
 *  encoded bytes (an LMDB page for the reader) and are valid while those bytes are (see ds_reader_get). */
typedef struct {
    const char *id;           /* NOT NUL-terminated: id_len bytes */
    int id_len;
    int n_tokens;             /* input_ids/labels length, one LLAVA_IMAGE_PLACEHOLDER (-200) per image */
    int n_images;
    int image_size;           /* S (0 for a record without images) */
    int flags;                /* DS_FLAG_* */
    const int32_t *input_ids; /* [n_tokens] (little-endian on disk; this code requires a little-endian host) */
    const int32_t *labels;    /* [n_tokens], -100 where no loss */
    const uint8_t *pixels;    /* [n_images, 3, S, S] uint8 CHW (CLIPImageProcessor before the 1/255 and mean/std) */
    uint64_t checksum;        /* FNV-1a 64 of the bytes after the header, as stored */
} ds_record_t;

/** Bytes an encoded record takes. */
size_t ds_record_size(int id_len, int n_tokens, int n_images, int image_size);
/** Encodes a record into buf (capacity cap >= ds_record_size). id is NUL-terminated (cut to DS_ID_MAX bytes).
 *  pixels may be NULL when n_images == 0. Sets *len. Returns 0 or LLAVA_EINVAL (bad sizes, cap too small). */
int ds_record_encode(void *buf, size_t cap, size_t *len, const char *id, const int32_t *input_ids,
                     const int32_t *labels, int n_tokens, int n_images, int image_size, int flags,
                     const uint8_t *pixels);
/** Decodes (zero-copy) and checks the header: magic, version, sizes consistent with len; with check_sum, also the
 *  payload checksum. Returns 0 or LLAVA_EFORMAT (the reason is written to err, which may be NULL). */
int ds_record_decode(const void *buf, size_t len, int check_sum, ds_record_t *out, char *err, size_t errlen);

/** 64-bit FNV-1a, continuing from h (start with DS_FNV_INIT). */
#define DS_FNV_INIT 0xcbf29ce484222325ULL
uint64_t ds_fnv1a(uint64_t h, const void *data, size_t n);
/** Folds one record into a shard checksum (start with DS_FNV_INIT, records in key order): FNV-1a of its 8 key bytes
 *  and its 32-byte header, which holds the FNV-1a of the rest of the record. So the shard checksum covers every byte
 *  through the record checksums, and the writer need not hash the pixels a second time. */
uint64_t ds_shard_fold(uint64_t h, const uint8_t key[8], const void *value, size_t len);
/** 8-byte big-endian key of a global sample index (so LMDB cursor order is index order). */
void ds_key_encode(int64_t index, uint8_t key[8]);
int64_t ds_key_decode(const uint8_t key[8]);

/** Sequence length after expanding each image placeholder to n_patches tokens. */
int64_t ds_expanded_length(int n_tokens, int n_images, int n_patches);
/** Truncation after expansion (the documented rule): the number of stored tokens (placeholders counted once) to
 *  keep so the expanded row fits max_seq_len (<= 0: no limit). When the cut falls inside an image run, the row is
 *  cut at the start of that run (no image is ever partly kept). */
int ds_truncate_point(const int32_t *input_ids, int n_tokens, int n_patches, int max_seq_len);
/** Targets the shifted loss counts in the first n tokens (labels != -100 at positions 1..n-1). */
int ds_count_targets(const int32_t *labels, int n);

/** Shard entry of a manifest. */
typedef struct {
    char name[64];      /* "shard-00000.lmdb", relative to the dataset directory */
    int64_t first;      /* first global sample index */
    int64_t count;
    uint64_t checksum;  /* FNV-1a 64 of (key, value) bytes of all records in order */
    int64_t bytes;      /* sum of record value sizes */
} ds_shard_t;

typedef struct {
    int version;
    int64_t n_samples, n_images_total, n_text_only, n_bad, n_source;
    int image_size, pad, max_seq_len, patch_size;
    char template_name[32];
    char tokenizer[1024];      /* path as given to ingest ("" if none) */
    uint64_t tokenizer_hash;
    char source_json[1024], images_dir[1024];
    int n_shards;
    ds_shard_t *shards;        /* [n_shards] */
    int32_t *lengths;          /* [n_samples] stored tokens (one placeholder per image) */
    int32_t *n_images;         /* [n_samples] */
} ds_manifest_t;

/** Parses dir/manifest.json into m (caller frees with ds_manifest_free). Every inconsistency (missing field, arrays
 *  of the wrong size, shards not covering [0, n_samples) contiguously) is LLAVA_EFORMAT with a message naming the
 *  field. LLAVA_ENOTFOUND when there is no manifest. */
int ds_manifest_load(const char *dir, ds_manifest_t *m);
/** Same from a JSON string (name is used in messages). */
int ds_manifest_parse(const char *json, size_t len, const char *name, ds_manifest_t *m);
/** Writes dir/manifest.json atomically (manifest.json.tmp, fsync, rename, fsync dir). created may be NULL. */
int ds_manifest_write(const char *dir, const ds_manifest_t *m, const char *created);
void ds_manifest_free(ds_manifest_t *m);
/** Shard holding sample i, or -1. */
int ds_manifest_shard_of(const ds_manifest_t *m, int64_t i);

typedef struct ds_reader ds_reader_t;

/** Opens a dataset for reading: loads the manifest; shards are opened on first use, MDB_RDONLY | MDB_NOSUBDIR |
 *  MDB_NOLOCK | MDB_NORDAHEAD (safe: a finished dataset is never written again, so readers in any number of
 *  processes need no lock file; shards may live on read-only storage). One long read txn per opened shard.
 *  A reader is for one thread. *out owned by the caller (ds_reader_close). */
int ds_reader_open(const char *dir, ds_reader_t **out);
void ds_reader_close(ds_reader_t **p);
const ds_manifest_t *ds_reader_manifest(const ds_reader_t *r);
int64_t ds_reader_n_samples(const ds_reader_t *r);
/** Stored length (placeholders counted once) and image count of sample i; -1 when out of range. */
int ds_reader_length(const ds_reader_t *r, int64_t i);
int ds_reader_n_images(const ds_reader_t *r, int64_t i);
int ds_reader_has_image(const ds_reader_t *r, int64_t i);
int ds_reader_shard_of(const ds_reader_t *r, int64_t i);

/** Zero-copy view of sample index: points into the memory map, valid until ds_reader_close. Checks the header
 *  (not the payload checksum: ds_reader_verify_shard does that). Returns 0, LLAVA_EINVAL (index out of range),
 *  LLAVA_ENOTFOUND (key missing), LLAVA_EFORMAT (damaged header; the message names shard and sample), LLAVA_EDB. */
int ds_reader_get(ds_reader_t *r, int64_t index, ds_record_t *out);

/** Damage found by ds_reader_verify_shard, one call per bad record (index -1: the shard as a whole). */
typedef void (*ds_damage_cb)(int shard, int64_t index, const char *msg, void *ud);
/** Re-reads every record of shard s: keys contiguous and in range, headers, payload checksums, the shard checksum
 *  and total bytes against the manifest. Returns the number of damaged records (+1 when the shard checksum or the
 *  key set is wrong) or a negative LLAVA_E* when the shard cannot be opened. */
int64_t ds_reader_verify_shard(ds_reader_t *r, int s, ds_damage_cb cb, void *ud);

typedef struct {
    int32_t image_token_index; /* e.g. 32000: each placeholder becomes n_patches of it */
    int n_patches;             /* tokens per image, (S/14)^2 for CLIP with the CLS row dropped */
    int32_t pad_token_id;      /* input id of padding (labels there are -100) */
    int max_seq_len;           /* <= 0: no limit; else rows are truncated after expansion (ds_truncate_point) */
} collate_opts_t;

/** Builds a micro-batch from samples indices[0..n): expanded input_ids, labels (-100 on image runs and padding),
 *  right padding to the longest row, lengths, pixel values normalised as CLIPImageProcessor (only images whose runs
 *  survive truncation), n_targets. out is allocated here (batch_free). All images must have one size.
 *  Returns 0, LLAVA_EINVAL, LLAVA_EFORMAT (damaged record, mixed image sizes), LLAVA_ENOMEM, LLAVA_EDB. */
int ds_collate(ds_reader_t *r, const int64_t *indices, int n, const collate_opts_t *opts, batch_t *out);

/** Same from records already decoded (used by ds_collate and by tests). */
int ds_collate_records(const ds_record_t *recs, int n, const collate_opts_t *opts, batch_t *out);

/** Normalises uint8 CHW pixels [3,S,S] to floats as CLIPImageProcessor, (x/255 - mean) / std (image_normalize_clip). */
void ds_pixels_normalize(const uint8_t *chw, int size, float *out);

#ifdef __cplusplus
}
#endif

#endif
