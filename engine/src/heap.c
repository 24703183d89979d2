/* An intrusive binary min-heap over a pointer tree (the shape of libuv's heap-inl.h):
 * O(log n) insert and removal of any node, no allocation. The node count gives the path
 * to the last slot: the bits of n below its top bit, read from the top, say left or right. */
#include "internal.h"

void pp__heap_init(pp__heap_t *heap, ptrdiff_t key_at, ptrdiff_t seq_at, bool key_signed) {
  heap->min = NULL;
  heap->n = 0;
  heap->key_at = key_at;
  heap->seq_at = seq_at;
  heap->key_signed = key_signed;
}

/* The key of `node` (a uint64_t key is read as int64_t: the types may alias). */
static int64_t *key_of(const pp__heap_t *heap, pp__heap_node_t *node) {
  return (int64_t *)((char *)node + heap->key_at);
}

static int less(const pp__heap_t *heap, const pp__heap_node_t *a, const pp__heap_node_t *b) {
  int64_t ka = *(const int64_t *)((const char *)a + heap->key_at);
  int64_t kb = *(const int64_t *)((const char *)b + heap->key_at);
  if (ka != kb) return heap->key_signed ? ka < kb : (uint64_t)ka < (uint64_t)kb;
  return *(const uint64_t *)((const char *)a + heap->seq_at) <
         *(const uint64_t *)((const char *)b + heap->seq_at);
}

/* Point the link from `above` (the root when NULL) that went to `old` at `now` instead. */
static void relink(pp__heap_t *heap, pp__heap_node_t *above, pp__heap_node_t *old,
                   pp__heap_node_t *now) {
  if (above == NULL)
    heap->min = now;
  else if (above->left == old)
    above->left = now;
  else
    above->right = now;
}

static void adopt_children(pp__heap_node_t *node) {
  if (node->left != NULL) node->left->parent = node;
  if (node->right != NULL) node->right->parent = node;
}

/* Swap a parent with its child `child`, fixing every link around them. */
static void swap_with_parent(pp__heap_t *heap, pp__heap_node_t *parent, pp__heap_node_t *child) {
  pp__heap_node_t *sibling, t = *parent;
  *parent = *child;
  *child = t;
  parent->parent = child;
  if (child->left == child) {
    child->left = parent;
    sibling = child->right;
  } else {
    child->right = parent;
    sibling = child->left;
  }
  if (sibling != NULL) sibling->parent = child;
  adopt_children(parent);
  relink(heap, child->parent, parent, child);
}

/* The slot for node number `k` (1-based): returns the parent's link to it. */
static pp__heap_node_t **slot_of(pp__heap_t *heap, unsigned int k, pp__heap_node_t **parent) {
  unsigned int path = 0, bits = 0;
  for (; k >= 2; k /= 2, bits++)
    path = (path << 1) | (k & 1);
  pp__heap_node_t **link = &heap->min;
  *parent = NULL;
  for (; bits > 0; bits--, path >>= 1) {
    *parent = *link;
    link = (path & 1) ? &(*link)->right : &(*link)->left;
  }
  return link;
}

static void sift_up(pp__heap_t *heap, pp__heap_node_t *node) {
  while (node->parent != NULL && less(heap, node, node->parent))
    swap_with_parent(heap, node->parent, node);
}

void pp__heap_insert(pp__heap_t *heap, pp__heap_node_t *node) {
  node->left = node->right = node->parent = NULL;
  pp__heap_node_t *parent;
  pp__heap_node_t **link = slot_of(heap, heap->n + 1, &parent);
  node->parent = parent;
  *link = node;
  heap->n++;
  sift_up(heap, node);
}

void pp__heap_remove(pp__heap_t *heap, pp__heap_node_t *node) {
  if (heap->n == 0) return;
  pp__heap_node_t *parent;
  pp__heap_node_t **link = slot_of(heap, heap->n, &parent);
  pp__heap_node_t *last = *link;
  *link = NULL;
  heap->n--;
  if (last == node) {
    if (heap->min == node) heap->min = NULL;
    node->left = node->right = node->parent = NULL;
    return;
  }
  /* Put the last node where `node` was, then restore the order in whichever direction. */
  last->left = node->left;
  last->right = node->right;
  last->parent = node->parent;
  adopt_children(last);
  relink(heap, node->parent, node, last);
  node->left = node->right = node->parent = NULL;
  for (;;) {
    pp__heap_node_t *smallest = last;
    if (last->left != NULL && less(heap, last->left, smallest)) smallest = last->left;
    if (last->right != NULL && less(heap, last->right, smallest)) smallest = last->right;
    if (smallest == last) break;
    swap_with_parent(heap, last, smallest);
  }
  sift_up(heap, last);
}

void pp__heap_set_key(pp__heap_t *heap, pp__heap_node_t *node, int64_t key) {
  int64_t *k = key_of(heap, node);
  if (*k == key) return;
  if (*k) pp__heap_remove(heap, node);
  *k = key;
  if (key) pp__heap_insert(heap, node);
}
