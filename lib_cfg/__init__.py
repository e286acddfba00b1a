"""lib_cfg: text-to-image diffusion with classifier-free guidance, the library beside the notebooks.

One job per module:
    config        TrainingConfig and the presets quick / ci / lesson / animal-faces
    synthetic     the offline captioned dataset (coloured shapes)
    animal_faces  real captioned pictures offline: emoji animal faces on coloured backgrounds
    labelled      what a labelled dataset declares; the judge and features follow from it
    data          load_data(config): synthetic, Hugging Face Hub, local image folder
    text_encoder  TextEncoder (CLIP or offline MiniLM) and EmbeddingCache
    model         the UNet with text conditioning (text_proj, null_text_embed, uncond_mask)
    diffusion     noise schedule, add_noise, DDPM / DDIM steps, classifier-free guided sampling
    classifier    classifier guidance: a noise-aware classifier and the gradient-guided step
    guidance      guidance beyond CFG: APG, CFG-Zero*, autoguidance
    train         the training step and loop; build_training(config) and run_training(config)
    bookkeeping   callbacks: logs, validation (loss, caption accuracy), sample grids, checkpoints
    caption_accuracy  does the model follow its captions? the conditional model as a classifier of them
    checkpoint    safetensors + JSON checkpoint folders, atomic, exactly resumable
    judge         the shapes' hand-written judge
    fidelity      speckle and a Frechet distance on features learnt from the labels
    evaluation    guidance-scale sweeps: adherence, held-out pairs, copies
    sampling      load a checkpoint for sampling; guidance-scale grids
    plotting, widgets, notebook, cli
"""
__version__ = "0.1.0"
