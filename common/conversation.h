/* LLaVA conversation records (the reference's llava_v1_5_mix665k.json / blip_laion_cc_sbu_558k.json format) and the
 * prompt templates that turn one into input_ids + labels exactly as LLaVA's train.py preprocess_* functions do.
 * Tested by tests/unit/test_templates.c against fixtures from tests/reference/make_template_fixtures.py. */
#ifndef LLAVA_CONVERSATION_H
#define LLAVA_CONVERSATION_H

#include <stddef.h>

#include "common/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLAVA_IMAGE_PLACEHOLDER (-200) /* input id standing for one image (the reference's IMAGE_TOKEN_INDEX) */
#define LLAVA_IGNORE_INDEX (-100)      /* label of tokens without loss */

typedef enum { CONV_HUMAN = 0, CONV_GPT = 1 } conv_role_t;

typedef struct {
    conv_role_t role;
    char *text; /* UTF-8, NUL-terminated */
} conv_turn_t;

typedef struct {
    char *id;    /* the record's "id" (numbers are printed in decimal); "#<index>" when absent */
    char *image; /* relative image path, NULL for a text-only record */
    int nturns;
    conv_turn_t *turns;
} conv_record_t;

typedef struct {
    int n;                  /* valid records */
    conv_record_t *records; /* (n) */
    int nskipped;           /* records reported through the error callback and left out */
} conv_file_t;

/** Called once per rejected record: its id ("#<index>" if it has none), its index in the JSON array, why. */
typedef void (*conv_error_cb)(const char *id, int index, const char *msg, void *ud);

/** Parses a JSON array of records {"id", "image"?, "conversations": [{"from": "human"|"gpt", "value": str}...]}.
 *  A record with a missing/ill-typed field, an unknown role, non-UTF-8 text or no turns is reported through cb
 *  (may be NULL) and skipped. Returns 0, LLAVA_EFORMAT for invalid JSON (logged with line and column) or a
 *  top level that is not an array, LLAVA_EIO, LLAVA_ENOMEM. *out is owned by the caller (conv_file_free). */
int conv_file_load(const char *path, conv_file_t **out, conv_error_cb cb, void *ud);
/** Same from memory; name is used in messages. */
int conv_file_parse(const char *json, size_t len, const char *name, conv_file_t **out, conv_error_cb cb, void *ud);
void conv_file_free(conv_file_t **p);

typedef enum { TPL_PLAIN, TPL_VICUNA_V1, TPL_LLAVA_V0 } template_t;

/** "plain" (also "v0_plain"), "vicuna_v1" (also "v1", "llava_v1"), "llava_v0". Returns 0 or LLAVA_EINVAL. */
int template_parse(const char *name, template_t *out);
const char *template_name(template_t tpl);

/** Builds the training sample of rec with tpl. input_ids and labels are cleared and filled (same length); every
 *  "<image>" of an image record becomes one LLAVA_IMAGE_PLACEHOLDER, counted in *n_images; labels are
 *  LLAVA_IGNORE_INDEX except on target tokens:
 *   plain:     BOS <image> caption "\n"            target: caption + "\n" (the question text is dropped, as LLaVA)
 *   vicuna_v1: BOS "{sys} USER: {q} ASSISTANT: {a}</s>USER: ..."   target: " {a}" and its "</s>"
 *   llava_v0:  BOS "{sys}\n\n### Human: {q}\n### Assistant: {a}\n### ..."  target: " {a}\n###"
 *  Text is tokenized per segment of equal loss mask, each chunk between images and control tokens starting with
 *  sentencepiece's dummy-prefix space as transformers' legacy LlamaTokenizer does, so masks are exact.
 *  Returns 0; LLAVA_EINVAL with a message in err (may be NULL) when the record does not fit the template
 *  (plain needs 2 turns with <image> in the first; vicuna_v1 needs alternating roles) or no token is a target;
 *  LLAVA_ENOMEM. */
int template_build(const tokenizer_t *tok, template_t tpl, const conv_record_t *rec, ids_t *input_ids, ids_t *labels,
                   int *n_images, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
