/* `llava-data synth`: coloured-shape images (libpng) with symbolic descriptions, and LLaVA-format caption, instruct and
 * multiple-choice files built from them; answers are determined by the image (colour, shape, count, position) so a
 * tiny model can learn them. Tested by tests/integration/ingest.sh (synth -> ingest -> inspect -> verify). */
#include "common/synth.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <png.h>

#include "common/err.h"
#include "common/ingest.h"

/* ---------------------------------------------------------------- deterministic RNG (splitmix64) */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static int rng_int(rng_t *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }
static double rng_unit(rng_t *r) { return (double)(rng_next(r) >> 11) / 9007199254740992.0; }
static void rng_shuffle(rng_t *r, int *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = rng_int(r, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---------------------------------------------------------------- scenes */

enum { N_KINDS = 4, N_COLORS = 4, N_POS = 4, MAX_SHAPES = 4 };
static const char *KINDS[N_KINDS] = {"circle", "square", "triangle", "star"};
static const char *COLORS[N_COLORS] = {"red", "green", "blue", "yellow"};
static const uint8_t RGB[N_COLORS][3] = {{220, 40, 40}, {40, 170, 60}, {40, 80, 220}, {240, 210, 40}};
static const char *POS[N_POS] = {"top left", "top right", "bottom left", "bottom right"};

typedef struct {
    int kind, color, pos;
    double cx, cy, r;      /* pixels */
    double box[4];         /* normalised x0, y0, x1, y1 */
} shape_t;

typedef struct {
    int n;
    shape_t s[MAX_SHAPES]; /* sorted by position */
} scene_t;

/* jitter (0-100) sets how much shapes vary: at 0 each is drawn at 0.40 of a quadrant's side (radius), centred in its
 * quadrant; at 100 (synth v2) radii span 0.28-0.42 and centres move up to 80% of the free room. The rng draws are the
 * same at every jitter, so only the geometry changes. */
static void scene_draw_random(rng_t *r, int size, int jitter, scene_t *sc) {
    double jit = jitter / 100.0;
    int kinds[N_KINDS] = {0, 1, 2, 3}, colors[N_COLORS] = {0, 1, 2, 3}, pos[N_POS] = {0, 1, 2, 3};
    rng_shuffle(r, kinds, N_KINDS);
    rng_shuffle(r, colors, N_COLORS);
    rng_shuffle(r, pos, N_POS);
    sc->n = 1 + rng_int(r, MAX_SHAPES);
    /* distinct kinds, colours and quadrants: every question about "the circle" or "the red object" has one answer */
    int order[MAX_SHAPES];
    for (int i = 0; i < sc->n; i++) order[i] = pos[i];
    for (int i = 0; i < sc->n; i++) /* sort by quadrant so descriptions list shapes in reading order */
        for (int j = i + 1; j < sc->n; j++)
            if (order[j] < order[i]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    double q = size / 2.0;
    for (int i = 0; i < sc->n; i++) {
        shape_t *s = &sc->s[i];
        s->kind = kinds[i];
        s->color = colors[i];
        s->pos = order[i];
        s->r = q * (0.40 - 0.12 * jit + 0.14 * jit * rng_unit(r));
        double slack = q / 2 - s->r;
        s->cx = (s->pos % 2) * q + q / 2 + (2 * rng_unit(r) - 1) * slack * 0.8 * jit;
        s->cy = (s->pos / 2) * q + q / 2 + (2 * rng_unit(r) - 1) * slack * 0.8 * jit;
        s->box[0] = (s->cx - s->r) / size;
        s->box[1] = (s->cy - s->r) / size;
        s->box[2] = (s->cx + s->r) / size;
        s->box[3] = (s->cy + s->r) / size;
    }
}

static int inside_polygon(const double *xy, int n, double x, double y) {
    int in = 0;
    for (int i = 0, j = n - 1; i < n; j = i++) {
        double xi = xy[2 * i], yi = xy[2 * i + 1], xj = xy[2 * j], yj = xy[2 * j + 1];
        if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) in = !in;
    }
    return in;
}

static int shape_contains(const shape_t *s, double x, double y) {
    double dx = x - s->cx, dy = y - s->cy, r = s->r;
    switch (s->kind) {
    case 0: return dx * dx + dy * dy <= r * r;
    case 1: return fabs(dx) <= 0.85 * r && fabs(dy) <= 0.85 * r;
    case 2: {
        double t[6] = {s->cx, s->cy - r, s->cx - r, s->cy + 0.8 * r, s->cx + r, s->cy + 0.8 * r};
        return inside_polygon(t, 3, x, y);
    }
    default: {
        double st[20];
        for (int k = 0; k < 10; k++) {
            double a = -M_PI / 2 + k * M_PI / 5, rr = (k % 2) ? 0.45 * r : r;
            st[2 * k] = s->cx + rr * cos(a);
            st[2 * k + 1] = s->cy + rr * sin(a);
        }
        return inside_polygon(st, 10, x, y);
    }
    }
}

/* Renders the scene on white with 2x2 supersampling into rgb [size*size*3]. */
static void scene_render(const scene_t *sc, int size, uint8_t *rgb) {
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            int acc[3] = {0, 0, 0};
            for (int sy = 0; sy < 2; sy++)
                for (int sx = 0; sx < 2; sx++) {
                    double px = x + 0.25 + 0.5 * sx, py = y + 0.25 + 0.5 * sy;
                    const uint8_t *c = NULL;
                    for (int i = 0; i < sc->n; i++)
                        if (shape_contains(&sc->s[i], px, py)) c = RGB[sc->s[i].color];
                    for (int k = 0; k < 3; k++) acc[k] += c ? c[k] : 255;
                }
            for (int k = 0; k < 3; k++) rgb[((size_t)y * size + x) * 3 + k] = (uint8_t)((acc[k] + 2) / 4);
        }
}

static int png_write_rgb(const char *path, const uint8_t *rgb, int w, int h) {
    int rc = 0;
    png_structp png = NULL;
    png_infop info = NULL;
    FILE *f = fopen(path, "wb");
    CHECK_GOTO(f, LLAVA_EIO, "%s: %s", path, strerror(errno));
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    CHECK_GOTO(png, LLAVA_ENOMEM, "png_create_write_struct failed");
    info = png_create_info_struct(png);
    CHECK_GOTO(info, LLAVA_ENOMEM, "png_create_info_struct failed");
    if (setjmp(png_jmpbuf(png))) {
        LOG_E("%s: libpng write error", path);
        rc = LLAVA_EIO;
        goto cleanup;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
cleanup:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    if (f && fclose(f) != 0 && rc == 0) rc = LLAVA_EIO;
    return rc;
}

/* ---------------------------------------------------------------- text */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} str_t;

static void str_addf(str_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void str_addf(str_t *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (s->oom || k < 0) return;
    if (s->n + (size_t)k + 1 > s->cap) {
        size_t cap = (s->n + (size_t)k + 1) * 2;
        char *p = realloc(s->p, cap);
        if (!p) {
            s->oom = 1;
            return;
        }
        s->p = p;
        s->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(s->p + s->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    s->n += (size_t)k;
}
static void str_clear(str_t *s) {
    s->n = 0;
    if (s->p) s->p[0] = 0;
}

static const char *CAPTION_PROMPTS[] = {
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Give a short and clear explanation of the subsequent image.", "Summarize the visual content of the image.",
    "Write a terse but informative summary of the picture."};
static const char *DETAIL_PROMPTS[] = {"Describe the image in detail.", "What do you see in this image? Describe it.",
                                       "Explain the visual content of the image in great detail."};

static void shape_phrase(str_t *s, const shape_t *sh) { str_addf(s, "a %s %s", COLORS[sh->color], KINDS[sh->kind]); }

static void caption(str_t *s, const scene_t *sc) {
    for (int i = 0; i < sc->n; i++) {
        if (i) str_addf(s, i + 1 == sc->n ? " and " : ", ");
        str_addf(s, i ? "a %s %s at the %s" : "A %s %s at the %s", COLORS[sc->s[i].color], KINDS[sc->s[i].kind],
                 POS[sc->s[i].pos]);
    }
    str_addf(s, ".");
}

static void count_answer(str_t *s, int n) {
    if (n == 1) str_addf(s, "There is 1 shape in the image.");
    else str_addf(s, "There are %d shapes in the image.", n);
}

/* One question/answer pair of kind q (0 count, 1 colour, 2 shape, 3 position, 4 what-is-at) about shape i. */
static void qa_pair(rng_t *r, const scene_t *sc, int q, str_t *qs, str_t *as) {
    const shape_t *sh = &sc->s[rng_int(r, sc->n)];
    switch (q) {
    case 0:
        str_addf(qs, "How many shapes are in the image?");
        count_answer(as, sc->n);
        break;
    case 1:
        str_addf(qs, "What color is the %s?", KINDS[sh->kind]);
        str_addf(as, "The %s is %s.", KINDS[sh->kind], COLORS[sh->color]);
        break;
    case 2:
        str_addf(qs, "What shape is the %s object?", COLORS[sh->color]);
        str_addf(as, "The %s object is a %s.", COLORS[sh->color], KINDS[sh->kind]);
        break;
    case 3:
        str_addf(qs, "Where is the %s %s?", COLORS[sh->color], KINDS[sh->kind]);
        str_addf(as, "The %s %s is at the %s.", COLORS[sh->color], KINDS[sh->kind], POS[sh->pos]);
        break;
    default: {
        int p = rng_int(r, N_POS);
        str_addf(qs, "What is at the %s of the image?", POS[p]);
        const shape_t *at = NULL;
        for (int i = 0; i < sc->n; i++)
            if (sc->s[i].pos == p) at = &sc->s[i];
        if (at) {
            str_addf(as, "There is ");
            shape_phrase(as, at);
            str_addf(as, " at the %s.", POS[p]);
        } else {
            str_addf(as, "Nothing, the %s of the image is empty.", POS[p]);
        }
    }
    }
}

static void detail(str_t *s, const scene_t *sc) {
    str_addf(s, "The image shows %d shape%s on a white background.", sc->n, sc->n > 1 ? "s" : "");
    for (int i = 0; i < sc->n; i++) {
        str_addf(s, " A %s %s is at the %s.", COLORS[sc->s[i].color], KINDS[sc->s[i].kind], POS[sc->s[i].pos]);
    }
    int empty = N_POS - sc->n;
    if (empty) str_addf(s, " The other %d corner%s of the image %s empty.", empty, empty > 1 ? "s" : "",
                        empty > 1 ? "are" : "is");
}

static void complex_qa(rng_t *r, const scene_t *sc, str_t *qs, str_t *as) {
    const shape_t *sh = &sc->s[rng_int(r, sc->n)];
    if (rng_int(r, 2) == 0) {
        str_addf(qs, "If the %s %s were removed, how many shapes would remain?", COLORS[sh->color], KINDS[sh->kind]);
        int left = sc->n - 1;
        str_addf(as, "The image has %d shape%s, so removing the %s %s would leave %d shape%s.", sc->n,
                 sc->n > 1 ? "s" : "", COLORS[sh->color], KINDS[sh->kind], left, left == 1 ? "" : "s");
    } else {
        int k = rng_int(r, N_KINDS), c = rng_int(r, N_COLORS);
        if (rng_int(r, 2) == 0) { /* ask about a present shape half of the time */
            k = sh->kind;
            c = sh->color;
        }
        const shape_t *match = NULL;
        for (int i = 0; i < sc->n; i++)
            if (sc->s[i].kind == k && sc->s[i].color == c) match = &sc->s[i];
        str_addf(qs, "Is there a %s %s in the image? Explain.", COLORS[c], KINDS[k]);
        if (match) {
            str_addf(as, "Yes. There is a %s %s at the %s.", COLORS[c], KINDS[k], POS[match->pos]);
        } else {
            str_addf(as, "No. The image shows ");
            for (int i = 0; i < sc->n; i++) {
                if (i) str_addf(as, i + 1 == sc->n ? " and " : ", ");
                shape_phrase(as, &sc->s[i]);
            }
            str_addf(as, ", but no %s %s.", COLORS[c], KINDS[k]);
        }
    }
}

static const char *MC_TYPES[4] = {"color", "shape", "count", "position"};

/* A multiple-choice question in ScienceQA's LLaVA form. Writes the human text to qs, the answer letter to *ans.
 * Every type has exactly four answers (4 colours, 4 shapes, 1-4 shapes, 4 quadrants), listed in that fixed order as
 * many ScienceQA questions list theirs: chance is 25%, and a tiny model scores by what it sees in the image, not by
 * matching option text in context, which a 2-layer 128-wide language model trained for minutes does not learn. */
static void mc_question(rng_t *r, const scene_t *sc, int type, str_t *qs, char *ans) {
    const shape_t *sh = &sc->s[rng_int(r, sc->n)];
    static const char *COUNTS[4] = {"1", "2", "3", "4"};
    const char *const *opts = NULL;
    int correct = 0;
    switch (type) {
    case 0:
        opts = COLORS;
        correct = sh->color;
        str_addf(qs, "What color is the %s?", KINDS[sh->kind]);
        break;
    case 1:
        opts = KINDS;
        correct = sh->kind;
        str_addf(qs, "What shape is the %s object?", COLORS[sh->color]);
        break;
    case 2:
        opts = COUNTS;
        correct = sc->n - 1;
        str_addf(qs, "How many shapes are in the image?");
        break;
    default:
        opts = POS;
        correct = sh->pos;
        str_addf(qs, "Where is the %s %s?", COLORS[sh->color], KINDS[sh->kind]);
        break;
    }
    str_addf(qs, "\nContext: N/A\nOptions:");
    for (int i = 0; i < 4; i++) str_addf(qs, " (%c) %s", 'A' + i, opts[i]);
    str_addf(qs, "\n<image>");
    *ans = (char)('A' + correct);
}

/* ---------------------------------------------------------------- files */

static cJSON *record_new(const char *id, const char *image) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", id);
    if (image) cJSON_AddStringToObject(o, "image", image);
    cJSON_AddArrayToObject(o, "conversations");
    return o;
}

static void record_turn(cJSON *rec, const char *from, const char *value) {
    cJSON *t = cJSON_CreateObject();
    if (!t) return;
    cJSON_AddStringToObject(t, "from", from);
    cJSON_AddStringToObject(t, "value", value);
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(rec, "conversations"), t);
}

static int json_save(const char *dir, const char *name, cJSON *o) {
    int rc = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = cJSON_Print(o);
    FILE *f = NULL;
    ALLOC_CHECK_GOTO(text);
    f = fopen(path, "wb");
    CHECK_GOTO(f, LLAVA_EIO, "%s: %s", path, strerror(errno));
    CHECK_GOTO(fputs(text, f) >= 0 && fputc('\n', f) != EOF, LLAVA_EIO, "%s: write failed", path);
cleanup:
    if (f && fclose(f) != 0 && rc == 0) rc = LLAVA_EIO;
    free(text);
    return rc;
}

/* Appends one line to the tokenizer corpus (newlines inside become separate lines). */
static void corpus_add(FILE *f, const char *text) { fprintf(f, "%s\n", text); }

static int run_spm_train(const synth_opts_t *o, const char *corpus) {
    int rc = 0;
    char a_in[4400], a_prefix[4400], a_vocab[64];
    /* relative paths, run inside out_dir: spm_train records them in the model's trainer_spec, and the model should
     * not depend on where synth wrote it */
    (void)corpus;
    snprintf(a_in, sizeof a_in, "--input=tokenizer-corpus.txt");
    snprintf(a_prefix, sizeof a_prefix, "--model_prefix=tokenizer");
    snprintf(a_vocab, sizeof a_vocab, "--vocab_size=%d", o->vocab_size);
    const char *prog = o->spm_train ? o->spm_train : "spm_train";
    char *argv[] = {(char *)prog, a_in, a_prefix, a_vocab, "--model_type=bpe", "--byte_fallback=true",
                    "--split_digits=true", "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
                    "--add_dummy_prefix=true", "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
                    "--hard_vocab_limit=false", "--num_threads=1", "--character_coverage=1.0",
                    "--allow_whitespace_only_pieces=true", "--minloglevel=2", NULL};
    pid_t pid = fork();
    CHECK_GOTO(pid >= 0, LLAVA_EIO, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (chdir(o->out_dir) != 0) _exit(126);
        execvp(prog, argv);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    CHECK_GOTO(WIFEXITED(st) && WEXITSTATUS(st) == 0, LLAVA_EIO,
               "%s failed (exit %d): install Debian's sentencepiece, or run synth with --no-tokenizer", prog,
               WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    char vocab[4300];
    snprintf(vocab, sizeof vocab, "%s/tokenizer.vocab", o->out_dir);
    unlink(vocab);
cleanup:
    return rc;
}

int synth_run(const synth_opts_t *o) {
    int rc = 0;
    char path[4300];
    uint8_t *rgb = NULL;
    cJSON *pre = NULL, *ins = NULL, *mc = NULL, *ans = NULL, *shapes = NULL;
    FILE *corpus = NULL;
    str_t q = {0}, a = {0}, t = {0};
    CHECK_GOTO(o->out_dir && strlen(o->out_dir) < 4000 && o->n >= 1 && o->n_test >= 0 && o->image_size >= 8 && o->image_size <= 4096 &&
                   o->jitter >= 0 && o->jitter <= 100,
               LLAVA_EINVAL, "synth: need --out, --n >= 1, --image-size in [8, 4096], --jitter in [0, 100]");
    CHECK_GOTO(mkdir(o->out_dir, 0755) == 0 || errno == EEXIST, LLAVA_EIO, "%s: %s", o->out_dir, strerror(errno));
    snprintf(path, sizeof path, "%s/images", o->out_dir);
    CHECK_GOTO(mkdir(path, 0755) == 0 || errno == EEXIST, LLAVA_EIO, "%s: %s", path, strerror(errno));
    rgb = malloc((size_t)o->image_size * o->image_size * 3);
    ALLOC_CHECK_GOTO(rgb);
    pre = cJSON_CreateArray();
    ins = cJSON_CreateArray();
    mc = cJSON_CreateArray();
    ans = cJSON_CreateArray();
    shapes = cJSON_CreateArray();
    ALLOC_CHECK_GOTO(pre && ins && mc && ans && shapes ? pre : NULL);
    snprintf(path, sizeof path, "%s/tokenizer-corpus.txt", o->out_dir);
    corpus = fopen(path, "wb");
    CHECK_GOTO(corpus, LLAVA_EIO, "%s: %s", path, strerror(errno));
    rng_t r = {o->seed * 0x2545F4914F6CDD1DULL + 1};
    char id[64], img[64];
    for (int i = 0; i < o->n + o->n_test; i++) {
        int test = i >= o->n, k = test ? i - o->n : i;
        scene_t sc;
        scene_draw_random(&r, o->image_size, o->jitter, &sc);
        scene_render(&sc, o->image_size, rgb);
        snprintf(img, sizeof img, "images/%s-%06d.png", test ? "test" : "train", k);
        snprintf(path, sizeof path, "%s/%s", o->out_dir, img);
        RC_CHECK_GOTO(png_write_rgb(path, rgb, o->image_size, o->image_size));
        str_clear(&t);
        caption(&t, &sc);
        cJSON *d = cJSON_CreateObject();
        ALLOC_CHECK_GOTO(d);
        cJSON_AddItemToArray(shapes, d);
        cJSON_AddStringToObject(d, "image", img);
        cJSON_AddStringToObject(d, "split", test ? "test" : "train");
        cJSON_AddStringToObject(d, "caption", t.p);
        cJSON *arr = cJSON_AddArrayToObject(d, "shapes");
        for (int s = 0; s < sc.n; s++) {
            cJSON *e = cJSON_CreateObject();
            ALLOC_CHECK_GOTO(e);
            cJSON_AddItemToArray(arr, e);
            cJSON_AddStringToObject(e, "shape", KINDS[sc.s[s].kind]);
            cJSON_AddStringToObject(e, "color", COLORS[sc.s[s].color]);
            cJSON_AddStringToObject(e, "position", POS[sc.s[s].pos]);
            double bx[4];
            for (int j = 0; j < 4; j++) bx[j] = round(sc.s[s].box[j] * 1000) / 1000;
            cJSON_AddItemToObject(e, "box", cJSON_CreateDoubleArray(bx, 4));
        }
        if (test) { /* held-out multiple choice, one question per image, types in rotation */
            int type = k % 4;
            str_clear(&q);
            char letter;
            mc_question(&r, &sc, type, &q, &letter);
            snprintf(id, sizeof id, "test-%06d", k);
            cJSON *rec = record_new(id, img);
            ALLOC_CHECK_GOTO(rec);
            cJSON_AddItemToArray(mc, rec);
            record_turn(rec, "human", q.p);
            char sol[32];
            snprintf(sol, sizeof sol, "The answer is %c.", letter);
            record_turn(rec, "gpt", sol);
            cJSON *an = cJSON_CreateObject();
            ALLOC_CHECK_GOTO(an);
            cJSON_AddItemToArray(ans, an);
            cJSON_AddStringToObject(an, "id", id);
            char l[2] = {letter, 0};
            cJSON_AddStringToObject(an, "answer", l);
            cJSON_AddStringToObject(an, "type", MC_TYPES[type]);
            continue;
        }
        corpus_add(corpus, t.p);
        /* (a) caption, CC-595K form */
        snprintf(id, sizeof id, "cap-%06d", k);
        cJSON *rec = record_new(id, img);
        ALLOC_CHECK_GOTO(rec);
        cJSON_AddItemToArray(pre, rec);
        const char *prompt = CAPTION_PROMPTS[rng_int(&r, 5)];
        str_clear(&q);
        if (rng_int(&r, 2)) str_addf(&q, "%s\n<image>", prompt);
        else str_addf(&q, "<image>\n%s", prompt);
        record_turn(rec, "human", q.p);
        record_turn(rec, "gpt", t.p);
        /* (b) instruct: a multi-turn conversation, then a detailed description or a reasoning question, then a
         * multiple-choice question in the held-out set's form */
        snprintf(id, sizeof id, "conv-%06d", k);
        rec = record_new(id, img);
        ALLOC_CHECK_GOTO(rec);
        cJSON_AddItemToArray(ins, rec);
        int turns = 2 + rng_int(&r, 3), qk[5] = {0, 1, 2, 3, 4};
        rng_shuffle(&r, qk, 5);
        for (int j = 0; j < turns; j++) {
            str_clear(&q);
            str_clear(&a);
            if (j == 0) str_addf(&q, rng_int(&r, 2) ? "<image>\n" : "");
            qa_pair(&r, &sc, qk[j], &q, &a);
            if (j == 0 && !strstr(q.p, "<image>")) str_addf(&q, "\n<image>");
            record_turn(rec, "human", q.p);
            record_turn(rec, "gpt", a.p);
            corpus_add(corpus, a.p);
        }
        str_clear(&q);
        str_clear(&a);
        if (k % 2 == 0) {
            snprintf(id, sizeof id, "detail-%06d", k);
            str_addf(&q, "%s\n<image>", DETAIL_PROMPTS[rng_int(&r, 3)]);
            detail(&a, &sc);
        } else {
            snprintf(id, sizeof id, "complex-%06d", k);
            str_addf(&q, "<image>\n");
            complex_qa(&r, &sc, &q, &a);
        }
        rec = record_new(id, img);
        ALLOC_CHECK_GOTO(rec);
        cJSON_AddItemToArray(ins, rec);
        record_turn(rec, "human", q.p);
        record_turn(rec, "gpt", a.p);
        corpus_add(corpus, q.p);
        corpus_add(corpus, a.p);
        str_clear(&q);
        char letter;
        mc_question(&r, &sc, rng_int(&r, 4), &q, &letter);
        snprintf(id, sizeof id, "mc-%06d", k);
        rec = record_new(id, img);
        ALLOC_CHECK_GOTO(rec);
        cJSON_AddItemToArray(ins, rec);
        record_turn(rec, "human", q.p);
        char sol[32];
        snprintf(sol, sizeof sol, "The answer is %c.", letter);
        record_turn(rec, "gpt", sol);
        corpus_add(corpus, q.p);
        corpus_add(corpus, sol);
    }
    CHECK_GOTO(!q.oom && !a.oom && !t.oom, LLAVA_ENOMEM, "out of memory");
    /* the templates' fixed text, so the tokenizer has pieces for it */
    const char *fixed[] = {
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: ASSISTANT:",
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions.",
        "### Human: ### Assistant: ###",
        "Answer with the option's letter from the given choices directly.",
        "Context: N/A Options: (A) (B) (C) (D) The answer is A. The answer is B. The answer is C. The answer is D."};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        for (int j = 0; j < 20; j++) corpus_add(corpus, fixed[i]);
    CHECK_GOTO(fclose(corpus) == 0, LLAVA_EIO, "tokenizer-corpus.txt: write failed");
    corpus = NULL;
    RC_CHECK_GOTO(json_save(o->out_dir, "pretrain.json", pre));
    RC_CHECK_GOTO(json_save(o->out_dir, "instruct.json", ins));
    RC_CHECK_GOTO(json_save(o->out_dir, "mc-test.json", mc));
    RC_CHECK_GOTO(json_save(o->out_dir, "mc-answers.json", ans));
    RC_CHECK_GOTO(json_save(o->out_dir, "shapes.json", shapes));
    if (o->tokenizer) {
        snprintf(path, sizeof path, "%s/tokenizer-corpus.txt", o->out_dir);
        RC_CHECK_GOTO(run_spm_train(o, path));
    }
cleanup:
    if (corpus) fclose(corpus);
    cJSON_Delete(pre);
    cJSON_Delete(ins);
    cJSON_Delete(mc);
    cJSON_Delete(ans);
    cJSON_Delete(shapes);
    free(q.p);
    free(a.p);
    free(t.p);
    free(rgb);
    return rc;
}

static void synth_usage(FILE *f) {
    fprintf(f, "usage: llava-data synth --out DIR [--n N] [--n-test M] [--seed S] [--image-size P] [--jitter J]\n"
               "                        [--vocab-size V] [--no-tokenizer] [--spm-train PROG]\n"
               "                        [--ingest S [--patch-size P] [--jobs K]]\n"
               "  Draws N training and M held-out images of 1-4 coloured shapes (PNG, P x P) and writes, under DIR:\n"
               "    pretrain.json   captions, CC-595K form (stage 1, template plain)\n"
               "    instruct.json   conversations, detailed descriptions, reasoning and multiple-choice questions\n"
               "                    (llava_instruct_150k form; stage 2)\n"
               "    mc-test.json    held-out multiple-choice questions, ScienceQA's LLaVA form\n"
               "    mc-answers.json [{id, answer, type}] for mc-test.json\n"
               "    shapes.json     each image's shapes (colour, kind, position, normalised box) and caption\n"
               "    tokenizer.model BPE tokenizer (byte fallback, split digits, identity normalisation, unk 0, bos 1,\n"
               "                    eos 2) trained with spm_train on tokenizer-corpus.txt\n"
               "  --jitter J   how much shapes vary, 0-100: 0 draws each at one size centred in its quadrant, 100 varies\n"
               "               the radius over 0.28-0.42 of a quadrant and moves it up to 80%% of the free room\n"
               "  Defaults: --n 1000 --n-test 200 --seed 1 --image-size 64 --jitter %d --vocab-size 1000. Output is a\n"
               "  function of the options only. Ingest with images dir = DIR and DIR/tokenizer.model.\n"
               "  --ingest S   then ingest them for a vision tower of S px with P px patches (--patch-size, default 14):\n"
               "               DIR/pretrain (template plain) and DIR/instruct (vicuna_v1) dataset directories, with\n"
               "               --jobs K threads\n"
               "  --spm-train PROG: a program name on PATH or an absolute path (it runs inside DIR).\n",
            SYNTH_DEFAULT_JITTER);
}

int llava_data_synth_main(int argc, char **argv) {
    synth_opts_t o = {.n = 1000, .n_test = 200, .seed = 1, .image_size = 64, .vocab_size = 1000, .tokenizer = 1,
                      .jitter = SYNTH_DEFAULT_JITTER};
    int ingest_size = 0, patch = 14, jobs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            synth_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-tokenizer")) {
            o.tokenizer = 0;
            continue;
        }
        if (!v) {
            fprintf(stderr, "synth: %s needs a value (or unknown option)\n", a);
            synth_usage(stderr);
            return 2;
        }
        char *end = NULL;
        long long x = strtoll(v, &end, 10);
        int num = end && *end == 0 && end != v;
        if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--spm-train")) o.spm_train = v;
        else if (num && !strcmp(a, "--n") && x > 0 && x < 100000000) o.n = (int)x;
        else if (num && !strcmp(a, "--n-test") && x >= 0 && x < 100000000) o.n_test = (int)x;
        else if (num && !strcmp(a, "--seed") && x >= 0) o.seed = (uint64_t)x;
        else if (num && !strcmp(a, "--image-size") && x >= 8 && x <= 4096) o.image_size = (int)x;
        else if (num && !strcmp(a, "--jitter") && x >= 0 && x <= 100) o.jitter = (int)x;
        else if (num && !strcmp(a, "--vocab-size") && x >= 300 && x <= 100000) o.vocab_size = (int)x;
        else if (num && !strcmp(a, "--ingest") && x >= 1 && x <= 4096) ingest_size = (int)x;
        else if (num && !strcmp(a, "--patch-size") && x >= 1 && x <= 4096) patch = (int)x;
        else if (num && !strcmp(a, "--jobs") && x >= 1 && x <= 1024) jobs = (int)x;
        else {
            fprintf(stderr, "synth: bad option or value: %s %s\n", a, v);
            synth_usage(stderr);
            return 2;
        }
        i++;
    }
    if (ingest_size && ingest_size % patch) {
        fprintf(stderr, "synth: --ingest %d is not a multiple of --patch-size %d\n", ingest_size, patch);
        return 2;
    }
    if (!o.out_dir) {
        fprintf(stderr, "synth: --out is required\n");
        synth_usage(stderr);
        return 2;
    }
    int rc = synth_run(&o);
    if (rc) {
        fprintf(stderr, "synth: %s\n", err_str(rc));
        return 1;
    }
    printf("synth: %d training + %d held-out images, files in %s\n", o.n, o.n_test, o.out_dir);
    if (!ingest_size) return 0;
    if (!o.tokenizer) {
        fprintf(stderr, "synth: --ingest needs the tokenizer (drop --no-tokenizer)\n");
        return 2;
    }
    if (jobs == 0) {
        long np = sysconf(_SC_NPROCESSORS_ONLN);
        jobs = np > 0 ? (int)np : 1;
    }
    char json[4200], tok[4200], out[4200];
    snprintf(tok, sizeof tok, "%s/tokenizer.model", o.out_dir);
    const char *names[2] = {"pretrain", "instruct"};
    const template_t tpls[2] = {TPL_PLAIN, TPL_VICUNA_V1};
    for (int k = 0; k < 2; k++) {
        snprintf(json, sizeof json, "%s/%s.json", o.out_dir, names[k]);
        snprintf(out, sizeof out, "%s/%s", o.out_dir, names[k]);
        ingest_opts_t io = {.json_path = json, .images_dir = o.out_dir, .tokenizer_path = tok, .out_dir = out,
                            .tpl = tpls[k], .image_size = ingest_size, .patch_size = patch, .shard_samples = 10000, .jobs = jobs,
                            .bad_fail = 1};
        ingest_stats_t st;
        if ((rc = ingest_run(&io, &st)) != 0) {
            fprintf(stderr, "synth: ingest of %s: %s\n", json, err_str(rc));
            return 1;
        }
        printf("synth: %s: %lld samples at %d px (%s)\n", out, (long long)st.n_samples, ingest_size,
               template_name(tpls[k]));
    }
    return 0;
}
