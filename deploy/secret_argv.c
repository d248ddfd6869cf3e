/* Keeps a secret off tritonserver's command line (/proc/PID/cmdline, `ps`).

   Triton 2.51 takes its admin key only in a flag (--grpc-restricted-protocol=...:header=KEY). deploy/secret_argv.py
   starts tritonserver with this library in LD_PRELOAD, SECRET_ARGV_FILE naming a 0600 file that holds the key, and
   the placeholder @SECRET_ARGV@ where the key goes in its arguments. Before main() runs, this constructor points each
   argument that holds the placeholder at a new string with the key in its place: main() parses the key, while the
   original argument memory, which /proc/PID/cmdline shows, keeps the placeholder. It then takes both variables out
   of the environment, so the server's children (the backend stubs) neither load the library nor learn the file.
   A missing, unreadable or empty file stops the process (exit 78) before the server starts without its key. */
#define _POSIX_C_SOURCE 200809L  /* strdup, strtok_r, setenv */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLACEHOLDER "@SECRET_ARGV@"
#define LIBRARY "libsecret_argv.so"

static void drop_from_preload(void) {
  const char *preload = getenv("LD_PRELOAD");
  if (preload == NULL) return;
  char *rest = strdup(preload), *kept = calloc(strlen(preload) + 1, 1), *save = NULL;
  if (rest == NULL || kept == NULL) exit(71);
  for (char *item = strtok_r(rest, " :", &save); item != NULL; item = strtok_r(NULL, " :", &save)) {
    const char *base = strrchr(item, '/');
    if (strcmp(base ? base + 1 : item, LIBRARY) == 0) continue;
    if (*kept) strcat(kept, ":");
    strcat(kept, item);
  }
  if (*kept) setenv("LD_PRELOAD", kept, 1); else unsetenv("LD_PRELOAD");
  free(rest);
  free(kept);
}

__attribute__((constructor)) static void secret_argv(int argc, char **argv, char **envp) {
  (void)envp;
  const char *path = getenv("SECRET_ARGV_FILE");
  if (path == NULL) return;
  char secret[1024];
  FILE *f = fopen(path, "r");
  if (f == NULL) { perror("secret_argv: SECRET_ARGV_FILE"); exit(78); }
  size_t n = fread(secret, 1, sizeof secret - 1, f);
  fclose(f);
  secret[n] = '\0';
  secret[strcspn(secret, "\r\n")] = '\0';
  if (secret[0] == '\0') { fprintf(stderr, "secret_argv: %s holds no secret\n", path); exit(78); }
  size_t plen = strlen(PLACEHOLDER), slen = strlen(secret);
  for (int i = 1; i < argc; i++) {
    char *at = strstr(argv[i], PLACEHOLDER);
    if (at == NULL) continue;
    size_t head = (size_t)(at - argv[i]);
    char *out = malloc(strlen(argv[i]) - plen + slen + 1);
    if (out == NULL) exit(71);
    memcpy(out, argv[i], head);
    memcpy(out + head, secret, slen);
    strcpy(out + head + slen, at + plen);
    argv[i] = out;  /* one placeholder per argument */
  }
  memset(secret, 0, sizeof secret);
  unsetenv("SECRET_ARGV_FILE");
  drop_from_preload();
}
