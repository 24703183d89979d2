/* An intrusive binary min-heap over a pointer tree (the shape of libuv's heap-inl.h):
 * O(log n) insert and removal of any node, no allocation. The node count gives the path
 * to the last slot: the bits of n below its top bit, read from the top, say left or right. */
#include "internal.h"

void pp__heap_init(pp__heap_t *heap, pp__heap_less_fn less) {
  heap->min = NULL;
  heap->n = 0;
  heap->less = less;
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
  if (parent->left != NULL) parent->left->parent = parent;
  if (parent->right != NULL) parent->right->parent = parent;
  if (child->parent == NULL)
    heap->min = child;
  else if (child->parent->left == parent)
    child->parent->left = child;
  else
    child->parent->right = child;
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
  while (node->parent != NULL && heap->less(node, node->parent))
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
  if (last->left != NULL) last->left->parent = last;
  if (last->right != NULL) last->right->parent = last;
  if (node->parent == NULL)
    heap->min = last;
  else if (node->parent->left == node)
    node->parent->left = last;
  else
    node->parent->right = last;
  node->left = node->right = node->parent = NULL;
  for (;;) {
    pp__heap_node_t *smallest = last;
    if (last->left != NULL && heap->less(last->left, smallest)) smallest = last->left;
    if (last->right != NULL && heap->less(last->right, smallest)) smallest = last->right;
    if (smallest == last) break;
    swap_with_parent(heap, last, smallest);
  }
  sift_up(heap, last);
}
