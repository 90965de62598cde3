"""ReferDiffusion: the reference baseline of the paper (Sec. 4).

* ``model``  - the InstructPix2Pix-style UNet + the Region-Embedder Module (REM) and fusion;
* ``losses`` - epsilon MSE, mask (BCE + Dice), edit-embedding and Region-Control losses;
* ``synth``  - stage-1 self-supervised samples ("Paint a {subject} on the {colour} mask").

Nothing here imports torch at package import time; import the submodules you need.
"""
