"""Label Studio review of RefCOCO-Edit samples (push tasks, pull and reconcile reviews)."""
