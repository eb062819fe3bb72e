"""Face data: image folders, insightface RecordIO and .bin, LFW with pairs.txt, alignment, augmentation,
and a synthetic face generator."""
