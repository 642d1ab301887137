/* `llava-data tokenize`: tokenizer command line (stdin lines -> ids, or ids -> text with --decode).
 * Tested by tests/integration/tokenizer_parity.sh and tests/unit/test_tokenizer.c. */
#ifndef LLAVA_CLI_TOKENIZE_H
#define LLAVA_CLI_TOKENIZE_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Entry point of `llava-data tokenize` (argv[0] is "tokenize"). Reads lines on stdin; writes one line per input
 *  line to stdout: space-separated ids, or with --decode the text of a line of ids. Returns a process exit code
 *  (0 ok, 1 runtime failure, 2 usage error). */
int llava_data_tokenize_main(int argc, char **argv);

/** Same with explicit streams (used by tests). */
int llava_data_tokenize_run(int argc, char **argv, FILE *in, FILE *out);

#ifdef __cplusplus
}
#endif

#endif
