"""One module per dataset: each knows its layout on disk (where images and labels are, how they pair, how labels are
encoded) and returns a `SegDataset`. `ppar_core.data.registry` names them; nothing else imports them directly."""
