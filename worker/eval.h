/* Multiple-choice evaluation (ScienceQA in LLaVA form, and the demo's held-out set): for each question, the
 * letter the model ranks highest at the position where the answer's letter is written. Used by llava-run after
 * training and by `llava-model eval`. Tested by tests/integration/demo_small.sh. */
#ifndef LLAVA_EVAL_H
#define LLAVA_EVAL_H

#include <stdio.h>

#include "common/conversation.h"
#include "common/tokenizer.h"
#include "worker/model_llava.h"

#define EVAL_MAX_TYPES 32

typedef struct {
    char name[32];
    int n, correct;
} eval_bucket_t;

typedef struct {
    int n, correct, skipped;
    int n_types;
    eval_bucket_t types[EVAL_MAX_TYPES]; /* by the answers file's "type" (or "all") */
} eval_result_t;

typedef struct {
    const char *questions;  /* JSON in LLaVA form; the gpt turn holds the answer text, e.g. "The answer is C." */
    const char *answers;    /* [{id, answer, type}] or NULL: answers parsed from the gpt turns, type "all" */
    const char *images_dir; /* images are relative to it; NULL = the questions file's directory */
    template_t tpl;
    int pad;                /* LLaVA-1.5 "pad" aspect ratio */
    int max_questions;      /* 0 = all */
} eval_opts_t;

/** Scores the model on the questions. Per-question failures (unreadable image, unparsable options) are counted as
 *  skipped and logged. Returns 0, or LLAVA_EIO / LLAVA_EFORMAT when the files cannot be read at all. */
int llava_eval_mc(llava_model_t *m, const tokenizer_t *tok, const eval_opts_t *o, eval_result_t *out);
/** Prints "accuracy 87.5% (35/40)" and one line per question type. */
void eval_result_print(const eval_result_t *r, FILE *f);

#endif
