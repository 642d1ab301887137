/* SentencePiece BPE tokenizer read from a tokenizer.model (ModelProto) file: encode equal to sentencepiece's BPE
 * encoding (identity normalization, byte fallback, user-defined pieces) and decode; HF-LlamaTokenizer-style special
 * tokens. Tested by tests/unit/test_tokenizer.c and tests/integration/tokenizer_parity.sh (vs spm_encode/spm_decode). */
#ifndef LLAVA_TOKENIZER_H
#define LLAVA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Growable int32 array. Zero-initialise ({0}); ids_free releases it. */
typedef struct {
    int32_t *v;
    int n, cap;
} ids_t;

/** Appends x. Returns 0 or LLAVA_ENOMEM (a is unchanged then). */
int ids_push(ids_t *a, int32_t x);
/** Appends n values. Returns 0 or LLAVA_ENOMEM. */
int ids_append(ids_t *a, const int32_t *x, int n);
/** Frees the storage and zeroes a. */
void ids_free(ids_t *a);

typedef struct tokenizer tokenizer_t;

/* Piece types, as sentencepiece's ModelProto.SentencePiece.Type. */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5, TOK_BYTE = 6 };

/** Loads a sentencepiece BPE model file. *out is owned by the caller (tokenizer_free).
 *  Returns 0, LLAVA_EIO, LLAVA_EFORMAT (bad protobuf, duplicate pieces), LLAVA_EUNSUPPORTED (not BPE, or a
 *  normalizer with a non-empty precompiled_charsmap such as nmt_nfkc), LLAVA_ENOMEM. */
int tokenizer_load(const char *path, tokenizer_t **out);
/** Same, from the bytes of a model file (copied as needed; buf may be freed afterwards). */
int tokenizer_load_mem(const void *buf, size_t len, tokenizer_t **out);
/** Frees *p and sets it to NULL. Accepts NULL / *p == NULL. */
void tokenizer_free(tokenizer_t **p);

/** Encodes text[0..len) as sentencepiece does (normalize, BPE, byte fallback) and appends the ids to out,
 *  preceded by BOS when add_bos. Control-token strings in text are ordinary text here.
 *  Returns 0 or LLAVA_ENOMEM. */
int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, int add_bos, ids_t *out);

/** Same as tokenizer_encode without the dummy-prefix space: for text that continues a chunk already encoded
 *  (whole-string BPE equals the concatenation when no piece spans the boundary). Never adds BOS. */
int tokenizer_encode_continue(const tokenizer_t *t, const char *text, size_t len, ids_t *out);

/** Encodes like transformers' slow LlamaTokenizer (legacy=True, as LLaVA loads it): the strings of the control
 *  pieces and the unknown piece ("<s>", "</s>", "<unk>") found in text become their ids; each text chunk between
 *  them is encoded with tokenizer_encode (so it gets its own dummy-prefix space). Appends to out. */
int tokenizer_encode_special(const tokenizer_t *t, const char *text, size_t len, int add_bos, ids_t *out);

/** If s[0..n) starts with the string of a control or unknown piece (longest first), returns its id and sets
 *  *mlen; otherwise returns -1. The matching tokenizer_encode_special uses. */
int tokenizer_match_special(const tokenizer_t *t, const char *s, size_t n, size_t *mlen);

/** Decodes ids as spm_decode does (control ids vanish, byte pieces reassembled as UTF-8 with U+FFFD for invalid
 *  bytes, U+2581 -> ' ', the leading dummy space removed, unknown -> " \u2047 "). *out is a NUL-terminated
 *  malloc'ed string owned by the caller. Returns 0, LLAVA_EINVAL (id out of range), LLAVA_ENOMEM. */
int tokenizer_decode(const tokenizer_t *t, const int32_t *ids, int n, char **out);

int tokenizer_vocab_size(const tokenizer_t *t);
int tokenizer_bos_id(const tokenizer_t *t); /* -1 if none */
int tokenizer_eos_id(const tokenizer_t *t); /* -1 if none */
int tokenizer_unk_id(const tokenizer_t *t);
int tokenizer_pad_id(const tokenizer_t *t); /* -1 if none */
/** Piece string of id (owned by t), NULL when id is out of range. */
const char *tokenizer_piece(const tokenizer_t *t, int id);
/** Piece type (TOK_*) of id, 0 when out of range. */
int tokenizer_piece_type(const tokenizer_t *t, int id);
/** Id of a piece string, -1 if not in the vocabulary. */
int tokenizer_piece_to_id(const tokenizer_t *t, const char *piece);
/** 64-bit FNV-1a hash of the model file's bytes (identifies the tokenizer in dataset manifests). */
uint64_t tokenizer_hash(const tokenizer_t *t);

#ifdef __cplusplus
}
#endif

#endif
