/* `llava-data ingest`: a LLaVA JSON file + image folder -> a dataset directory (manifest.json + LMDB shards), in
 * parallel, deterministic, resumable after a kill, with a report of every bad record. Format: docs/dataset-format.md.
 * Tested by tests/integration/ingest.sh; throughput by bench/bench_ingest.sh. */
#ifndef LLAVA_INGEST_H
#define LLAVA_INGEST_H

#include <stdint.h>

#include "common/conversation.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *json_path;      /* LLaVA JSON array */
    const char *images_dir;     /* record "image" paths are relative to it */
    const char *tokenizer_path; /* sentencepiece tokenizer.model */
    const char *out_dir;        /* dataset directory (created) */
    template_t tpl;
    int image_size;             /* S: records hold [n_images, 3, S, S] uint8 */
    int patch_size;             /* vision tower patch side: (S/patch)^2 tokens per image; 0 = DS_PATCH_SIZE (14) */
    int pad;                    /* image_aspect_ratio pad (LLaVA-1.5 stage 2) */
    int shard_samples;          /* samples per shard (the last may hold fewer) */
    int jobs;                   /* worker threads (decode + preprocess + tokenize) */
    int bad_fail;               /* 1: any bad record stops the ingest (non-zero, no manifest) */
    int max_seq_len;            /* > 0: truncate after image expansion (ds_truncate_point); 0: keep all */
    long max_pixels;            /* refuse images with more pixels (decompression bombs); 0: default */
    int progress;               /* print samples/s and ETA to stderr every 2 s */
    int64_t die_after;          /* test-only fault injection: _exit(137) after this many records put (0: off) */
} ingest_opts_t;

typedef struct {
    int64_t n_source, n_samples, n_images, n_text_only, n_bad, n_kept_shards, n_shards;
    double seconds, samples_per_s; /* of the records processed in this run */
} ingest_stats_t;

/** Runs the ingest. Completed shards of an interrupted earlier run with the same parameters are kept (after their
 *  checksum is recomputed); the rest is redone. Writes out_dir/ingest-report.jsonl (one JSON line per bad record:
 *  id, index, reason) and, last and atomically, out_dir/manifest.json. Returns 0; LLAVA_EFORMAT (invalid JSON, with
 *  line:col logged), LLAVA_EINVAL (a bad record under bad_fail, or no good sample), LLAVA_EIO, LLAVA_EDB,
 *  LLAVA_ENOSPACE, LLAVA_ENOMEM. stats may be NULL. */
int ingest_run(const ingest_opts_t *o, ingest_stats_t *stats);

/** Entry point of `llava-data ingest` (argv[0] is "ingest"). Returns a process exit code (0, 1 failure, 2 usage). */
int llava_data_ingest_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
