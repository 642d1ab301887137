/* `llava-data image`: decode one JPEG/PNG, CLIP-preprocess it and write pixel_values F32 [3,S,S] as safetensors.
 * Tested by tests/integration/cli_image.sh. */
#ifndef LLAVA_CLI_IMAGE_H
#define LLAVA_CLI_IMAGE_H

#ifdef __cplusplus
extern "C" {
#endif

/** Entry point of `llava-data image --size S [--pad] [--max-pixels P] IN OUT.safetensors` (argv[0] is "image").
 *  Returns a process exit code (0 ok, 1 runtime failure, 2 usage error). */
int llava_data_image_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
