// PixelData: images, masks, datasets, shards and the sampler.
