#ifndef CPIXELIMAGE_H
#define CPIXELIMAGE_H
// C wrappers over libjpeg(-turbo) and libpng (their error handling uses setjmp/longjmp, which Swift
// cannot do): decode and encode 8-bit images in memory, reporting errors as text.
#include <stddef.h>
#include <stdint.h>
#endif
