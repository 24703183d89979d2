/* The `peerpool` host program: shared declarations of its files. */
#ifndef PP_HOST_H
#define PP_HOST_H

/* `peerpool attach PATH`: connect this terminal (line editing, prompts, completion) or this
 * pipe (lines in, results out; exit 1 if a line failed) to a host's --repl-socket. Returns the
 * process exit code. */
int host_attach(const char *path);

/* The history file of the REPL ($PEERPOOL_HISTORY, else ~/.peerpool_history; "" = none).
 * Returns a static string, or NULL when there is none. */
const char *host_history_path(void);

#endif
