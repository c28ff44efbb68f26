#include "CPixelImage.h"
