"""Help strings several verbs share."""

CORPUS_HELP = ("Corpus spec: shapes[:split][,n=..], a .jsonl manifest, a Karpathy/BLIP .json, a .csv (image,caption "
               "columns), or webdataset .tar shards (a path or a glob such as 'shards/*.tar').")
IMAGE_ROOT_HELP = ("Folder the image paths of a Karpathy .json or a .csv corpus are relative to "
                   "(default: that file's folder).")
SKIP_BAD_HELP = ("Decode every image once at load and skip missing or corrupt ones (counted in the manifest) "
                 "instead of stopping at the first; for .jsonl, .json, .csv and .tar corpora.")
