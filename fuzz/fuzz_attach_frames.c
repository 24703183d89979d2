/* libFuzzer target: the frames `peerpool attach` reads from a host's REPL socket
 * (bindings/host/attach.c, compiled in here): "\1" kind length ":" payload, with anything
 * outside frames skipped (and its start kept to show if the host closes without a frame).
 *
 * Input: byte 0 seeds the chunk sizes, the rest is what a host sends. It is parsed twice: whole,
 * and arriving in pseudo-random chunks (1..16 bytes mostly, up to 512 at times) with frames
 * taken after each chunk, as the client's loop does. The receive buffer is always exactly as
 * big as the bytes held, so ASan sees any read past them. Checked:
 *   - each frame's payload is as long as its header says, NUL-terminated, and found in the
 *     input right after a ':' (it was cut from the right place);
 *   - both ways give the same frames, the same bytes left over and the same text kept from
 *     outside frames.
 * A broken property aborts with a message (libFuzzer saves the input). Built and run by
 * fuzz/CMakeLists.txt (ctest case fuzz.attach_frames, `make fuzz-c`).
 */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>

#include "host/attach.c"

#include "fuzz_check.h"

/* attach.c's terminal and host helpers: never called here (the client is not interactive). */
int term_open(const term_cbs_t *cbs, const char *history, int want_readline) {
  return 0;
}
int term_input_ready(void) {
  return 0;
}
void term_write(const char *s, size_t n, int to_stderr) {}
void term_prompt(const char *prompt) {}
void term_watch(int on) {}
void term_cancel_line(void) {}
void term_history_add(const char *chunk) {}
void term_resize(void) {}
void term_close(void) {}
const char *term_backend(void) {
  return "none";
}
const char *host_history_path(void) {
  return NULL;
}

/* What one parse gave: the frames (kind, length, payload back to back), what was left. */
typedef struct {
  char *log;
  size_t n, nframes;
  char *left;
  size_t nleft;
  char kept[sizeof(unframed)];
  size_t nkept;
} result_t;

static void log_add(result_t *r, const void *p, size_t n) {
  r->log = realloc(r->log, r->n + n);
  CHECK(r->log != NULL);
  memcpy(r->log + r->n, p, n);
  r->n += n;
}

static const uint8_t *input;
static size_t input_len;

/* Take every whole frame off the client's buffer. */
static void drain(result_t *r) {
  frame_t f;
  while (next_frame(&f)) {
    CHECK(f.payload[f.len] == '\0');
    char *needle = malloc(f.len + 1);
    needle[0] = ':';
    memcpy(needle + 1, f.payload, f.len);
    CHECK(memmem(input, input_len, needle, f.len + 1) != NULL);
    free(needle);
    log_add(r, &f.kind, 1);
    log_add(r, &f.len, sizeof(f.len));
    log_add(r, f.payload, f.len);
    r->nframes++;
    free(f.payload);
  }
  CHECK(rlen <= rcap);
}

/* Append n bytes to the client's buffer, which is made exactly big enough for them. */
static void receive(const uint8_t *data, size_t n) {
  char *b = malloc(rlen + n ? rlen + n : 1);
  CHECK(b != NULL);
  if (rlen) memcpy(b, rbuf, rlen);
  memcpy(b + rlen, data, n);
  free(rbuf);
  rbuf = b;
  rlen += n;
  rcap = rlen;
}

static void start(void) {
  free(rbuf);
  rbuf = NULL;
  rlen = rcap = 0;
  framed = 0;
  nunframed = 0;
}

static void finish(result_t *r) {
  r->left = malloc(rlen ? rlen : 1);
  if (rlen) memcpy(r->left, rbuf, rlen);
  r->nleft = rlen;
  memcpy(r->kept, unframed, nunframed);
  r->nkept = nunframed;
  start();
}

static uint32_t xorshift(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  if (size < 1) return 0;
  uint32_t rng = 2463534242u ^ ((uint32_t)in[0] * 2654435761u);
  const uint8_t *data = in + 1;
  size_t n = size - 1;
  input = data;
  input_len = n;
  result_t whole = {0}, chunked = {0};

  start();
  receive(data, n);
  drain(&whole);
  finish(&whole);

  for (size_t at = 0; at < n;) {
    uint32_t x = xorshift(&rng);
    size_t len = (x & 0x100) ? 1 + (x >> 9) % 512 : 1 + (x >> 9) % 16;
    if (len > n - at) len = n - at;
    receive(data + at, len);
    drain(&chunked);
    at += len;
  }
  finish(&chunked);

  CHECK(whole.nframes == chunked.nframes && whole.n == chunked.n &&
        (whole.n == 0 || memcmp(whole.log, chunked.log, whole.n) == 0));
  CHECK(whole.nleft == chunked.nleft && memcmp(whole.left, chunked.left, whole.nleft) == 0);
  CHECK(whole.nkept == chunked.nkept && memcmp(whole.kept, chunked.kept, whole.nkept) == 0);
  free(whole.log);
  free(chunked.log);
  free(whole.left);
  free(chunked.left);
  return 0;
}
