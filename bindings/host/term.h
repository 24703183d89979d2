/* The line editor of the host's REPL and of `peerpool attach`: GNU readline's callback
 * interface when the program is built with it and input is a terminal, else plain line reading.
 * It never reads on its own: the caller watches the input fd (a uv_poll_t in the host, poll(2)
 * in attach) and calls term_input_ready() when it is readable, so the caller's loop keeps
 * running while the prompt waits. There is one terminal per process (readline is global). */
#ifndef PP_HOST_TERM_H
#define PP_HOST_TERM_H

#include <stddef.h>

typedef struct {
  /* A complete line without its newline, or NULL at end of input (Ctrl-D, EOF). */
  void (*on_line)(void *arg, const char *line);
  /* A key was pressed while term_watch(1) was in force (readline only: plain input is
   * line-buffered by the terminal, so there a whole line arrives through on_line). */
  void (*on_key)(void *arg);
  /* Candidates for completing `word`: a malloc'd, NULL-terminated array of malloc'd
   * strings (the caller of term frees them), or NULL for none. */
  char **(*complete)(void *arg, const char *word);
  void *arg;
} term_cbs_t;

/* Start reading lines from stdin (fd 0). `history` is a file to load and append history to
 * (NULL or "" for none). `want_readline` = 0 forces plain input. Returns 1 when readline is in
 * use, 0 for plain input. No prompt is shown until term_prompt(). */
int term_open(const term_cbs_t *cbs, const char *history, int want_readline);

/* Input is readable: read what is there and dispatch it. Returns 0, or -1 once input has
 * ended (on_line(NULL) has been called; stop watching the fd). */
int term_input_ready(void);

/* Write output without garbling the prompt: the prompt and the half-typed line are taken
 * down, the text written (a newline is added if it lacks one), and both put back. */
void term_write(const char *s, size_t n, int to_stderr);

/* Show `prompt` (NULL: no prompt, e.g. while a line is still running). */
void term_prompt(const char *prompt);

/* While on, a key press is reported through on_key instead of being edited. */
void term_watch(int on);

/* Ctrl-C: drop the half-typed line and show the prompt again on a fresh line. */
void term_cancel_line(void);

/* Add a complete chunk to the history (and to the history file). */
void term_history_add(const char *chunk);

/* The window changed size (SIGWINCH). */
void term_resize(void);

/* Restore the terminal, save the history. Safe to call twice. */
void term_close(void);

/* "readline 8.2" or "plain line input". */
const char *term_backend(void);

#endif
