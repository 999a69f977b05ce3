"""Model pieces on top of the CLIP encoder: the decode head (`decode_head`), the prototype classifier and the Visual
Text Prototypes (`vtp`)."""
