/* Tests common/hfconfig: transformers' defaults, published configs (tests/fixtures/hfconfig/, JSON, copies of the
 * Hub's config.json), RoPE forms, every bad-field class with its one-line message, and the writer's round trip.
 * Run: ctest -R test_hfconfig */
#include "common/err.h"
#include "common/hfconfig.h"
#include "tests/test.h"

#include <fcntl.h>
#include <unistd.h>

/* Parses json with stderr captured; checks rc, one log line, and that the line contains want. */
static void parse_expect(const char *json, int want_rc, const char *want) {
    char cap[512];
    snprintf(cap, sizeof cap, "%s/stderr.txt", test_tmpdir());
    fflush(stderr);
    int saved = dup(2);
    int fd = open(cap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    llava_config_t c;
    int rc = hfconfig_parse(json, "config.json", &c);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char text[2048] = {0};
    FILE *fp = fopen(cap, "r");
    size_t n = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    if (fp) fclose(fp);
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    CHECKF(rc == want_rc, "%s: rc %d (%s), want %d; log: %s", json, rc, err_str(rc), want_rc, text);
    CHECKF(lines == 1, "%s: %d log lines: %s", json, lines, text);
    CHECKF(strstr(text, want) && strstr(text, "config.json: "), "log lacks '%s': %s", want, text);
}

static void test_defaults(void) {
    llava_config_t c;
    CHECK_RC(hfconfig_parse("{\"model_type\":\"llava\"}", "t", &c), 0);
    CHECK(c.has_vision && c.has_text && strcmp(c.model_type, "llava") == 0);
    /* LlavaConfig() without a vision_config: CLIP ViT-L/14-336 */
    CHECK_EQ_INT(c.vision.hidden_size, 1024);
    CHECK_EQ_INT(c.vision.intermediate_size, 4096);
    CHECK_EQ_INT(c.vision.num_hidden_layers, 24);
    CHECK_EQ_INT(c.vision.num_attention_heads, 16);
    CHECK_EQ_INT(c.vision.image_size, 336);
    CHECK_EQ_INT(c.vision.patch_size, 14);
    CHECK_EQ_INT(c.vision.projection_dim, 768);
    CHECK(strcmp(c.vision.hidden_act, "quick_gelu") == 0 && c.vision.layer_norm_eps == 1e-5);
    CHECK(strcmp(c.text.model_type, "llama") == 0);
    CHECK_EQ_INT(c.text.vocab_size, 32000);
    CHECK_EQ_INT(c.text.hidden_size, 4096);
    CHECK_EQ_INT(c.text.intermediate_size, 11008);
    CHECK_EQ_INT(c.text.num_hidden_layers, 32);
    CHECK_EQ_INT(c.text.num_key_value_heads, 32);
    CHECK_EQ_INT(c.text.head_dim, 128);
    CHECK_EQ_INT(c.text.max_position_embeddings, 2048);
    CHECK(c.text.rms_norm_eps == 1e-6 && c.text.rope_theta == 10000.0 && c.text.initializer_range == 0.02);
    CHECK(strcmp(c.text.hidden_act, "silu") == 0);
    CHECK(c.text.bos_token_id == 1 && c.text.eos_token_id == 2 && c.text.pad_token_id == -1);
    CHECK(!c.text.tie_word_embeddings && !c.text.attention_bias && !c.text.mlp_bias && c.text.pretraining_tp == 1);
    CHECK_EQ_INT(c.image_token_index, 32000);
    CHECK_EQ_INT(c.image_seq_length, 576);
    CHECK_EQ_INT(c.vision_feature_layer, -2);
    CHECK(strcmp(c.projector_hidden_act, "gelu") == 0);
    CHECK(strcmp(c.vision_feature_select_strategy, "default") == 0);
    CHECK(c.multimodal_projector_bias == 1 && c.tie_word_embeddings == 0 && c.pad_token_id == -1);

    /* a vision_config that is given starts from CLIPVisionConfig() defaults */
    CHECK_RC(hfconfig_parse("{\"model_type\":\"llava\",\"vision_config\":{\"model_type\":\"clip_vision_model\"},"
                            "\"image_token_id\":32001,\"text_config\":{\"tie_word_embeddings\":true}}",
                            "t", &c),
             0);
    CHECK_EQ_INT(c.vision.hidden_size, 768);
    CHECK_EQ_INT(c.vision.intermediate_size, 3072);
    CHECK_EQ_INT(c.vision.image_size, 224);
    CHECK_EQ_INT(c.vision.patch_size, 32);
    CHECK_EQ_INT(c.vision.projection_dim, 512);
    CHECK_EQ_INT(c.vision.num_channels, 3);
    CHECK(c.vision.initializer_factor == 1.0 && c.vision.initializer_range == 0.02);
    CHECK_EQ_INT(c.image_token_index, 32001);
    CHECK(c.tie_word_embeddings == 1); /* forwarded from the text config, as LlavaConfig does */

    CHECK_RC(hfconfig_parse("{\"model_type\":\"llama\",\"hidden_size\":2048,\"num_attention_heads\":16,"
                            "\"num_key_value_heads\":4,\"eos_token_id\":[128001,128009],\"pad_token_id\":null}",
                            "t", &c),
             0);
    CHECK(!c.has_vision && c.has_text && strcmp(c.model_type, "llama") == 0);
    CHECK_EQ_INT(c.text.head_dim, 128);
    CHECK_EQ_INT(c.text.num_key_value_heads, 4);
    CHECK_EQ_INT(c.text.eos_token_id, 128001);
    CHECK_EQ_INT(c.text.pad_token_id, -1);
    CHECK_RC(hfconfig_parse("{\"model_type\":\"llama\",\"head_dim\":64,\"hidden_size\":64,\"num_attention_heads\":2}",
                            "t", &c),
             0);
    CHECK_EQ_INT(c.text.head_dim, 64);
    CHECK_RC(hfconfig_parse("{\"model_type\":\"clip_vision_model\",\"hidden_size\":64,\"num_attention_heads\":4}", "t",
                            &c),
             0);
    CHECK(c.has_vision && !c.has_text && c.vision.hidden_size == 64 && c.vision.image_size == 224);
}

static void test_rope(void) {
    llava_config_t c;
    CHECK_RC(hfconfig_parse("{\"model_type\":\"llama\",\"rope_theta\":500000}", "t", &c), 0);
    CHECK(c.text.rope_theta == 500000.0);
    CHECK_RC(hfconfig_parse("{\"model_type\":\"llama\",\"rope_parameters\":{\"rope_type\":\"default\","
                            "\"rope_theta\":1000000.0}}",
                            "t", &c),
             0);
    CHECK(c.text.rope_theta == 1e6);
    CHECK_RC(hfconfig_parse("{\"model_type\":\"llama\",\"rope_scaling\":null,\"rope_theta\":20000}", "t", &c), 0);
    CHECK(c.text.rope_theta == 20000.0);
    parse_expect("{\"model_type\":\"llama\",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}}", LLAVA_ECONFIG,
                 "key 'rope_scaling': RoPE scaling type 'linear' is not implemented");
    parse_expect("{\"model_type\":\"llava\",\"text_config\":{\"rope_parameters\":{\"rope_type\":\"llama3\","
                 "\"rope_theta\":500000.0,\"factor\":8.0}}}",
                 LLAVA_ECONFIG, "key 'text_config.rope_parameters': RoPE scaling type 'llama3'");
    parse_expect("{\"model_type\":\"llama\",\"rope_parameters\":{\"rope_theta\":\"x\"}}", LLAVA_ECONFIG,
                 "key 'rope_parameters.rope_theta': expected a number, got a string");
    parse_expect("{\"model_type\":\"llama\",\"rope_scaling\":[1]}", LLAVA_ECONFIG, "key 'rope_scaling'");
}

static void test_bad_fields(void) {
    parse_expect("{\"hidden_size\":4}", LLAVA_ECONFIG, "key 'model_type': missing");
    parse_expect("not json", LLAVA_ECONFIG, "not valid JSON");
    parse_expect("[1]", LLAVA_ECONFIG, "not a JSON object");
    parse_expect("{\"model_type\":\"mistral\"}", LLAVA_ECONFIG, "key 'model_type': 'mistral' is not supported");
    parse_expect("{\"model_type\":3}", LLAVA_ECONFIG, "key 'model_type': expected a string, got a number");
    parse_expect("{\"model_type\":\"llava\",\"text_config\":{\"hidden_size\":\"4096\"}}", LLAVA_ECONFIG,
                 "key 'text_config.hidden_size': expected an integer, got a string");
    parse_expect("{\"model_type\":\"llava\",\"text_config\":{\"model_type\":\"qwen2\"}}", LLAVA_ECONFIG,
                 "key 'text_config.model_type': 'qwen2' is not supported");
    parse_expect("{\"model_type\":\"llava\",\"vision_config\":{\"intermediate_size\":-5}}", LLAVA_ECONFIG,
                 "key 'vision_config.intermediate_size': -5 is out of range");
    parse_expect("{\"model_type\":\"llava\",\"vision_config\":{\"patch_size\":14.5}}", LLAVA_ECONFIG,
                 "key 'vision_config.patch_size': expected an integer, got a number");
    parse_expect("{\"model_type\":\"llava\",\"vision_config\":{\"hidden_size\":100,\"num_attention_heads\":12}}",
                 LLAVA_ECONFIG, "key 'vision_config.hidden_size': 100 is not divisible by num_attention_heads 12");
    parse_expect("{\"model_type\":\"llama\",\"hidden_size\":4100,\"num_attention_heads\":32}", LLAVA_ECONFIG,
                 "key 'hidden_size': 4100 is not divisible by num_attention_heads 32");
    parse_expect("{\"model_type\":\"llama\",\"num_key_value_heads\":5}", LLAVA_ECONFIG,
                 "key 'num_key_value_heads': num_attention_heads 32 is not divisible by 5");
    parse_expect("{\"model_type\":\"llama\",\"num_key_value_heads\":0}", LLAVA_ECONFIG,
                 "key 'num_key_value_heads': 0 is out of range");
    parse_expect("{\"model_type\":\"llama\",\"vocab_size\":1e12}", LLAVA_ECONFIG, "key 'vocab_size'");
    parse_expect("{\"model_type\":\"llama\",\"rms_norm_eps\":-1}", LLAVA_ECONFIG, "key 'rms_norm_eps'");
    parse_expect("{\"model_type\":\"llama\",\"tie_word_embeddings\":1}", LLAVA_ECONFIG,
                 "key 'tie_word_embeddings': expected true or false, got a number");
    parse_expect("{\"model_type\":\"llama\",\"hidden_act\":null}", LLAVA_ECONFIG,
                 "key 'hidden_act': expected a string, got null");
    parse_expect("{\"model_type\":\"llama\",\"eos_token_id\":[]}", LLAVA_ECONFIG, "key 'eos_token_id': empty list");
    parse_expect("{\"model_type\":\"llama\",\"bos_token_id\":\"1\"}", LLAVA_ECONFIG, "key 'bos_token_id'");
    parse_expect("{\"model_type\":\"llava\",\"vision_config\":[]}", LLAVA_ECONFIG,
                 "key 'vision_config': expected an object, got an array");
    parse_expect("{\"model_type\":\"llava\",\"vision_feature_layer\":[-2,-5]}", LLAVA_ECONFIG,
                 "key 'vision_feature_layer': a list of layers is not supported");
    parse_expect("{\"model_type\":\"llava\",\"vision_feature_layer\":-30}", LLAVA_ECONFIG,
                 "key 'vision_feature_layer': -30 is outside");
    parse_expect("{\"model_type\":\"llava\",\"vision_feature_select_strategy\":\"cls\"}", LLAVA_ECONFIG,
                 "key 'vision_feature_select_strategy': 'cls'");
    parse_expect("{\"model_type\":\"llava\",\"image_token_index\":-1}", LLAVA_ECONFIG, "key 'image_token_index'");
    parse_expect("{\"model_type\":\"clip\"}", LLAVA_ECONFIG, "key 'vision_config': missing");
    parse_expect("{\"model_type\":\"clip_vision_model\",\"patch_size\":448}", LLAVA_ECONFIG,
                 "key 'patch_size': 448 is larger than image_size 224");

    llava_config_t c;
    log_set_level(LOG_NONE);
    CHECK_RC(hfconfig_read("fixtures/hfconfig/no-such-file.json", &c), LLAVA_EIO);
    log_set_level(LOG_INFO);
}

static void test_published(void) {
    llava_config_t c;
    CHECK_RC(hfconfig_read("fixtures/hfconfig/llava-1.5-7b-hf.json", &c), 0);
    CHECK(strcmp(c.model_type, "llava") == 0 && c.has_vision && c.has_text);
    CHECK_EQ_INT(c.vision.hidden_size, 1024);
    CHECK_EQ_INT(c.vision.intermediate_size, 4096);
    CHECK_EQ_INT(c.vision.num_hidden_layers, 24);
    CHECK_EQ_INT(c.vision.num_attention_heads, 16);
    CHECK_EQ_INT(c.vision.image_size, 336);
    CHECK_EQ_INT(c.vision.patch_size, 14);
    CHECK_EQ_INT(c.vision.projection_dim, 768);
    CHECK(strcmp(c.vision.hidden_act, "quick_gelu") == 0);
    CHECK_EQ_INT(c.text.vocab_size, 32064);
    CHECK_EQ_INT(c.text.hidden_size, 4096);
    CHECK_EQ_INT(c.text.num_hidden_layers, 32);
    CHECK_EQ_INT(c.text.num_key_value_heads, 32);
    CHECK_EQ_INT(c.text.head_dim, 128);
    CHECK_EQ_INT(c.text.max_position_embeddings, 4096);
    CHECK(c.text.rms_norm_eps == 1e-5 && c.text.rope_theta == 10000.0);
    CHECK_EQ_INT(c.text.bos_token_id, 1);
    CHECK_EQ_INT(c.text.eos_token_id, 2);
    CHECK_EQ_INT(c.image_token_index, 32000);
    CHECK_EQ_INT(c.image_seq_length, 576);
    CHECK_EQ_INT(c.pad_token_id, 32001);
    CHECK_EQ_INT(c.vision_feature_layer, -2);
    CHECK(strcmp(c.vision_feature_select_strategy, "default") == 0 && strcmp(c.projector_hidden_act, "gelu") == 0);
    CHECK(c.multimodal_projector_bias == 1 && c.tie_word_embeddings == 0);
    /* LLaVA-1.5 at 336 px / 14: 24 x 24 = 576 patches, matching image_seq_length */
    CHECK_EQ_INT((c.vision.image_size / c.vision.patch_size) * (c.vision.image_size / c.vision.patch_size),
                 c.image_seq_length);

    CHECK_RC(hfconfig_read("fixtures/hfconfig/vicuna-7b-v1.5.json", &c), 0);
    CHECK(strcmp(c.model_type, "llama") == 0 && !c.has_vision && c.has_text);
    CHECK_EQ_INT(c.text.vocab_size, 32000);
    CHECK_EQ_INT(c.text.hidden_size, 4096);
    CHECK_EQ_INT(c.text.intermediate_size, 11008);
    CHECK_EQ_INT(c.text.max_position_embeddings, 4096);
    CHECK_EQ_INT(c.text.pad_token_id, 0);
    CHECK(c.text.rms_norm_eps == 1e-5 && c.text.rope_theta == 10000.0);

    CHECK_RC(hfconfig_read("fixtures/hfconfig/clip-vit-large-patch14-336.json", &c), 0);
    CHECK(strcmp(c.model_type, "clip") == 0 && c.has_vision && !c.has_text);
    CHECK_EQ_INT(c.vision.hidden_size, 1024);
    CHECK_EQ_INT(c.vision.num_hidden_layers, 24);
    CHECK_EQ_INT(c.vision.image_size, 336);
    CHECK_EQ_INT(c.vision.patch_size, 14);
    CHECK_EQ_INT(c.vision.projection_dim, 768);
    CHECK(c.vision.layer_norm_eps == 1e-5 && strcmp(c.vision.hidden_act, "quick_gelu") == 0);
}

static void test_write(void) {
    llava_config_t c, r;
    llava_config_default(&c);
    c.vision.hidden_size = 64;
    c.vision.intermediate_size = 128;
    c.vision.num_hidden_layers = 2;
    c.vision.num_attention_heads = 4;
    c.vision.image_size = 28;
    c.vision.patch_size = 14;
    c.vision.layer_norm_eps = 1e-6;
    c.text.hidden_size = 96;
    c.text.intermediate_size = 200;
    c.text.num_hidden_layers = 2;
    c.text.num_attention_heads = 6;
    c.text.num_key_value_heads = 2;
    c.text.head_dim = 16;
    c.text.vocab_size = 1000;
    c.text.rope_theta = 123456.5;
    c.text.pad_token_id = 0;
    c.text.eos_token_id = -1;
    c.image_token_index = 999;
    c.image_seq_length = 4;
    c.vision_feature_layer = -1;
    c.multimodal_projector_bias = 0;
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", test_tmpdir());
    CHECK_RC(hfconfig_write_llava(path, &c), 0);
    CHECK_RC(hfconfig_read(path, &r), 0);
    CHECK(r.vision.hidden_size == 64 && r.vision.intermediate_size == 128 && r.vision.num_attention_heads == 4);
    CHECK(r.vision.image_size == 28 && r.vision.patch_size == 14 && r.vision.layer_norm_eps == 1e-6);
    CHECK(r.vision.projection_dim == 768 && strcmp(r.vision.model_type, "clip_vision_model") == 0);
    CHECK(r.text.hidden_size == 96 && r.text.num_key_value_heads == 2 && r.text.head_dim == 16);
    CHECK(r.text.vocab_size == 1000 && r.text.rope_theta == 123456.5 && r.text.rms_norm_eps == 1e-6);
    CHECK(r.text.pad_token_id == 0 && r.text.eos_token_id == -1 && r.text.bos_token_id == 1);
    CHECK(r.image_token_index == 999 && r.image_seq_length == 4 && r.vision_feature_layer == -1);
    CHECK(r.multimodal_projector_bias == 0 && r.tie_word_embeddings == 0);

    /* the writer refuses what the reader would refuse */
    c.text.num_key_value_heads = 4;
    log_set_level(LOG_NONE);
    CHECK_RC(hfconfig_write_llava(path, &c), LLAVA_ECONFIG);
    c.text.num_key_value_heads = 2;
    c.has_vision = 0;
    CHECK_RC(hfconfig_write_llava(path, &c), LLAVA_ECONFIG);
    c.has_vision = 1;
    CHECK_RC(hfconfig_write_llava("/nonexistent-dir/config.json", &c), LLAVA_EIO);
    log_set_level(LOG_INFO);
    CHECK_RC(hfconfig_read(path, &r), 0); /* the earlier file is intact */
    CHECK(r.text.num_key_value_heads == 2);
}

int main(void) {
    test_defaults();
    test_rope();
    test_bad_fields();
    test_published();
    test_write();
    return test_finish();
}
