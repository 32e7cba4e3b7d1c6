"""Perception: what the agent sees and reads.

- `perception.capture.ScreenCapture`: grab a screen region as an (H,W,3) uint8 RGB frame (mss, XShm).
- `perception.preprocess.preprocess`: uint8 frames -> normalised (B,3,H,W) float input, batched,
  native resolution (pad/crop top-left) by default.
- `perception.encoder.create_encoder`: the screen encoder (an open_clip ViT from a JSON config in
  `perception/configs/`), trained jointly with the agent; returns patch tokens and a pooled vector.
- `perception.text.InstructionEncoder`: all-MiniLM-L6-v2, offline and frozen; sentence and token
  embeddings with each token's character span.
- `perception.bench`: `squirrel bench perception`.

Submodules are imported explicitly (torch is not loaded by `import perception`).
"""
