/* The REPL's line editor: readline's callback interface, or plain line reading (see term.h).
 * readline keeps its state in globals, so this file does too: one terminal per process. */
#include "term.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef PP_HAVE_READLINE
#include <readline/history.h>
#include <readline/readline.h>
#endif

static term_cbs_t cbs;
static int opened, use_rl, in_line_cb, watching, ended, tty_in;
#ifdef PP_HAVE_READLINE
static int installed; /* readline's callback handler is in place */
#endif
static char *prompt;       /* the prompt in force ("" while none) */
static int prompt_shown;   /* plain mode: the prompt is on screen, no line since */
static char *history_path; /* NULL: no history file */
/* plain mode: the partial line read so far */
static char *pbuf;
static size_t plen, pcap;

static void set_prompt_string(const char *p) {
  free(prompt);
  prompt = strdup(p ? p : "");
}

/* ---- readline ---------------------------------------------------------------------------- */

#ifdef PP_HAVE_READLINE
static char **comp_list; /* candidates handed to readline one by one */
static size_t comp_next;

static char *comp_generator(const char *text, int state) {
  if (state == 0) {
    free(comp_list); /* the strings themselves were handed to readline, which frees them */
    comp_list = cbs.complete ? cbs.complete(cbs.arg, text) : NULL;
    comp_next = 0;
  }
  if (comp_list == NULL) return NULL;
  char *s = comp_list[comp_next];
  if (s == NULL) {
    free(comp_list);
    comp_list = NULL;
    return NULL;
  }
  comp_next++;
  return s;
}

static char **comp_attempt(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  rl_completion_append_character = '\0';
  return rl_completion_matches(text, comp_generator);
}

static void rl_line(char *line) {
  in_line_cb = 1;
  if (line == NULL) {
    ended = 1;
    /* readline leaves the cursor after the prompt; end that line. */
    fputc('\n', stdout);
    fflush(stdout);
    rl_callback_handler_remove();
    installed = 0;
    cbs.on_line(cbs.arg, NULL);
  } else {
    cbs.on_line(cbs.arg, line);
    free(line);
  }
  in_line_cb = 0;
}
#endif

/* ---- plain input ------------------------------------------------------------------------- */

static void plain_dispatch(int at_eof) {
  size_t start = 0;
  for (size_t i = 0; i < plen; i++) {
    if (pbuf[i] != '\n') continue;
    size_t end = i;
    if (end > start && pbuf[end - 1] == '\r') end--;
    pbuf[end] = '\0';
    prompt_shown = 0;
    in_line_cb = 1;
    cbs.on_line(cbs.arg, pbuf + start);
    in_line_cb = 0;
    start = i + 1;
    if (ended) return;
  }
  if (start > 0) {
    memmove(pbuf, pbuf + start, plen - start);
    plen -= start;
  }
  if (at_eof) {
    if (plen > 0) { /* a last line without its newline */
      pbuf[plen] = '\0';
      plen = 0;
      in_line_cb = 1;
      cbs.on_line(cbs.arg, pbuf);
      in_line_cb = 0;
    }
    ended = 1;
    in_line_cb = 1;
    cbs.on_line(cbs.arg, NULL);
    in_line_cb = 0;
  }
}

static int plain_read(void) {
  if (pcap - plen < 4097) {
    size_t cap = pcap ? pcap * 2 : 8192;
    char *b = realloc(pbuf, cap);
    if (b == NULL) return 0; /* try again later */
    pbuf = b;
    pcap = cap;
  }
  ssize_t n = read(0, pbuf + plen, pcap - plen - 1);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return 0;
    plain_dispatch(1);
    return -1;
  }
  if (n == 0) {
    plain_dispatch(1);
    return -1;
  }
  plen += (size_t)n;
  plain_dispatch(0);
  return ended ? -1 : 0;
}

/* ---- the interface ----------------------------------------------------------------------- */

int term_open(const term_cbs_t *c, const char *history, int want_readline) {
  cbs = *c;
  opened = 1;
  tty_in = isatty(0);
  set_prompt_string("");
  history_path = history && *history ? strdup(history) : NULL;
#ifdef PP_HAVE_READLINE
  use_rl = want_readline && tty_in && isatty(1);
  if (use_rl) {
    rl_readline_name = "peerpool";
    rl_catch_signals = 0; /* the host handles SIGINT and SIGWINCH on its loop */
    rl_catch_sigwinch = 0;
    rl_change_environment = 0;
    rl_attempted_completion_function = comp_attempt;
    /* '.' and ':' do not break words, so "pool:sta" completes as one. */
    rl_completer_word_break_characters = " \t\n\"'`@$><=;|&{(,+-*/%^~#[]";
    rl_completer_quote_characters = NULL;
    using_history();
    stifle_history(1000);
    if (history_path) read_history(history_path);
  }
#else
  (void)want_readline;
  use_rl = 0;
#endif
  return use_rl;
}

int term_input_ready(void) {
  if (!opened || ended) return -1;
#ifdef PP_HAVE_READLINE
  if (use_rl) {
    if (watching) {
      char ch;
      ssize_t n = read(0, &ch, 1);
      if (n == 1) {
        cbs.on_key(cbs.arg);
        return 0;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
      /* end of input while watching */
      rl_line(NULL);
      return -1;
    }
    if (!installed) return 0; /* no prompt yet: the bytes wait in the terminal */
    rl_callback_read_char();
    return ended ? -1 : 0;
  }
#endif
  /* Plain input is line-buffered by the terminal: while watching, the REPL takes a whole
   * line as the key press. */
  return plain_read();
}

void term_write(const char *s, size_t n, int to_stderr) {
  FILE *f = to_stderr ? stderr : stdout;
  int need_nl = n == 0 || s[n - 1] != '\n';
#ifdef PP_HAVE_READLINE
  if (use_rl && installed && !in_line_cb) {
    rl_clear_visible_line();
    fflush(stdout);
    fwrite(s, 1, n, f);
    if (need_nl) fputc('\n', f);
    fflush(f);
    rl_forced_update_display();
    return;
  }
#endif
  if (prompt_shown && !in_line_cb) {
    /* plain terminal: put the output on a line of its own, then the prompt again */
    fputs("\r", stdout);
    fflush(stdout);
  }
  fwrite(s, 1, n, f);
  if (need_nl) fputc('\n', f);
  fflush(f);
  if (prompt_shown && !in_line_cb) {
    fputs(prompt, stdout);
    fflush(stdout);
  }
}

void term_prompt(const char *p) {
  set_prompt_string(p);
  if (!opened || ended) return;
#ifdef PP_HAVE_READLINE
  if (use_rl) {
    if (!installed) {
      rl_callback_handler_install(prompt, rl_line);
      installed = 1;
      return;
    }
    if (in_line_cb) { /* readline shows it when the line callback returns */
      rl_set_prompt(prompt);
      return;
    }
    rl_clear_visible_line();
    rl_set_prompt(prompt);
    rl_forced_update_display();
    return;
  }
#endif
  if (!tty_in) return; /* no prompts on a pipe */
  prompt_shown = *prompt != '\0';
  if (prompt_shown) {
    fputs(prompt, stdout);
    fflush(stdout);
  }
}

void term_watch(int on) {
  watching = on;
}

void term_cancel_line(void) {
  if (!opened || ended) return;
#ifdef PP_HAVE_READLINE
  if (use_rl && installed) {
    rl_free_line_state();
    rl_callback_sigcleanup();
    rl_point = rl_end;
    rl_redisplay();
    fputs("^C\n", stdout);
    fflush(stdout);
    rl_replace_line("", 0);
    rl_on_new_line(); /* the REPL shows its prompt next */
    return;
  }
#endif
  if (tty_in) {
    fputs("^C\n", stdout);
    fflush(stdout);
    prompt_shown = 0;
  }
  plen = 0; /* plain: the partial line is dropped */
}

void term_history_add(const char *chunk) {
#ifdef PP_HAVE_READLINE
  if (!use_rl || chunk == NULL || *chunk == '\0') return;
  HIST_ENTRY *last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
  if (last && strcmp(last->line, chunk) == 0) return; /* no repeats */
  add_history(chunk);
  if (history_path) {
    if (access(history_path, F_OK) == 0)
      append_history(1, history_path);
    else
      write_history(history_path);
  }
#else
  (void)chunk;
#endif
}

void term_resize(void) {
#ifdef PP_HAVE_READLINE
  if (use_rl && installed) rl_resize_terminal();
#endif
}

void term_close(void) {
  if (!opened) return;
  opened = 0;
#ifdef PP_HAVE_READLINE
  if (use_rl) {
    if (installed) {
      rl_callback_handler_remove(); /* restores the terminal's modes */
      installed = 0;
      fputc('\n', stdout);
      fflush(stdout);
    }
    if (history_path) history_truncate_file(history_path, 1000);
    clear_history();
    free(comp_list);
    comp_list = NULL;
  }
#endif
  free(history_path);
  history_path = NULL;
  free(prompt);
  prompt = NULL;
  free(pbuf);
  pbuf = NULL;
  plen = pcap = 0;
}

const char *term_backend(void) {
#ifdef PP_HAVE_READLINE
  static char name[64];
  snprintf(name, sizeof(name), "readline %s", rl_library_version);
  return name;
#else
  return "plain line input";
#endif
}
