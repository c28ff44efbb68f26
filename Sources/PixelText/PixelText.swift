// PixelText: tokenizers and conversation templates.
