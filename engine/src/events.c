/* Pool events (conn_open, conn_close, eject, burn, leak, acquire_timeout) for observers. */
#include "internal.h"
