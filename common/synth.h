/* `llava-data synth`: synthetic LLaVA data made from nothing: PNG images of coloured shapes with their symbolic
 * description, a caption file (stage 1), an instruct file (stage 2), a held-out multiple-choice set with answers, and
 * a small BPE tokenizer trained on the text with spm_train. Tested by tests/integration/ingest.sh. */
#ifndef LLAVA_SYNTH_H
#define LLAVA_SYNTH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The demo's default: shapes nearly centred in their quadrant at nearly one size. A frozen random vision tower (the
 * demo's stand-in for a pretrained CLIP) gives such shapes one code per kind, so what is trained is the projector
 * and the language model's binding of colour, kind and place (docs/architecture.md, "The demo's accuracy"). */
#define SYNTH_DEFAULT_JITTER 20

typedef struct {
    const char *out_dir;   /* created if missing */
    int n;                 /* training images */
    int n_test;            /* held-out multiple-choice images */
    uint64_t seed;
    int image_size;        /* side of the PNGs */
    int jitter;            /* 0-100: how much shapes vary in size and place (scene_draw_random in synth.c) */
    int vocab_size;        /* tokenizer vocabulary (a soft limit) */
    int tokenizer;         /* 1: train out_dir/tokenizer.model with spm_train; 0: skip */
    const char *spm_train; /* program to run (NULL: "spm_train" from PATH) */
} synth_opts_t;

/** Writes, under o->out_dir: images/train-NNNNNN.png and images/test-NNNNNN.png, shapes.json (per image: shapes with
 *  colour, kind, position, normalised box [x0,y0,x1,y1], and the caption), pretrain.json (CC-595K form),
 *  instruct.json (llava_instruct_150k form: conversation, detail, complex reasoning, multiple choice),
 *  mc-test.json (ScienceQA's LLaVA form), mc-answers.json ([{id, answer, type}]), tokenizer-corpus.txt and
 *  tokenizer.model. The same options give byte-identical files. Returns 0 or LLAVA_EIO / LLAVA_EINVAL /
 *  LLAVA_ENOMEM. */
int synth_run(const synth_opts_t *o);

/** Entry point of `llava-data synth` (argv[0] is "synth"). Returns a process exit code (0, 1 failure, 2 usage). */
int llava_data_synth_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
