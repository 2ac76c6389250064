"""Help strings several verbs share."""

CORPUS_HELP = (
    "Corpus spec: shapes[:split][,n=..], a .jsonl manifest, a Karpathy/BLIP .json, a .csv (image,caption "
    "columns), webdataset .tar shards or .parquet files (a path or a glob such as 'shards/*.tar'), or a Hugging "
    "Face dataset: hf:NAME[:SPLIT] from the local datasets cache, or a save_to_disk folder."
)
IMAGE_ROOT_HELP = (
    "Folder the image paths of a Karpathy .json or a .csv corpus are relative to (default: that file's folder)."
)
SKIP_BAD_HELP = (
    "Decode every image once at load and skip missing or corrupt ones, and .tar samples without an image or "
    "a caption member (counted in the manifest), instead of stopping at the first; for .jsonl, .json, .csv "
    "and .tar corpora."
)
EVAL_IMAGE_ROOT_HELP = "Folder the image paths of a Karpathy .json or .csv --test / --full corpus are relative to."
CLIP_ARCH_HELP = "open_clip architecture of a checkpoint file given as --clip."
CLIP_SPACE_HELP = (
    "Embedding space of a --clip checkpoint file or local-dir:DIR folder, e.g. ViT-L-14:openai for a "
    "copy of OpenAI's weights."
)
IMAGE_ROOT_TEST_HELP = IMAGE_ROOT_HELP + " Also for --test."
SKIP_BAD_TEST_HELP = SKIP_BAD_HELP + " Also for --test."
BUFFER_IMAGE_ROOT_HELP = (
    "Folder the image paths of the buffer's .json or .csv corpus are relative to "
    "(default: the one the buffer was made with)."
)
BUFFER_SKIP_BAD_HELP = "Skip unreadable images of the buffer's corpus (default: as the buffer was made)."
IMAGE_COLUMN_HELP = (
    "Image column of a .parquet or hf: corpus: encoded image bytes, or an Image() struct (default: jpg for "
    ".parquet, as img2dataset writes; image for hf:)."
)
CAPTION_COLUMN_HELP = "Caption column of a .parquet or hf: corpus: a string or a list of strings (default: caption)."
IMAGE_COLUMN_TEST_HELP = IMAGE_COLUMN_HELP + " Also for --test."
CAPTION_COLUMN_TEST_HELP = CAPTION_COLUMN_HELP + " Also for --test."
EVAL_IMAGE_COLUMN_HELP = "Image column of a .parquet or hf: --test / --full corpus (default: jpg / image)."
EVAL_CAPTION_COLUMN_HELP = "Caption column of a .parquet or hf: --test / --full corpus (default: caption)."
BUFFER_IMAGE_COLUMN_HELP = (
    "Image column of the buffer's .parquet or hf: corpus (default: the one the buffer was made with)."
)
BUFFER_CAPTION_COLUMN_HELP = "Caption column of the buffer's .parquet or hf: corpus (default: as the buffer was made)."
# "\\[": rich (typer's help renderer) reads "[ray]" as a markup tag and drops it
ENGINE_HELP = "Where the heavy stages run: local (this process) or ray (a Ray cluster; pip install -e '.\\[ray]')."
ADDRESS_HELP = (
    "With --engine ray: the Ray cluster to join (auto, HOST:PORT or ray://HOST:PORT; default: start a local "
    "Ray instance)."
)
GPUS_PER_WORKER_HELP = "With --engine ray: GPUs each worker actor reserves (>0: it runs on cuda)."
CPUS_PER_WORKER_HELP = "With --engine ray: CPUs each worker actor reserves (also its torch threads)."
