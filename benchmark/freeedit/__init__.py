"""FreeEdit: mask-free reference-based editing driven by a multi-modal instruction (text + exemplar).

* ``model`` - the multi-modal instruction encoder, the 8-channel InstructPix2Pix-style U-Net, the
  detail extractor and Decoupled Residual ReferAttention (DRRA), training forward/loss and dual
  classifier-free guidance ``edit``;
* ``drra``  - the DRRA layers and the attention processors that install them in a U-Net;
* ``infer`` - the ``freeedit`` benchmark editor (reference-based track);
* ``train`` - the phased trainer (on the shared training core).

Nothing here imports torch at package import time; import the submodules you need.
"""
