"""How `load_image_classification_data` gets its data, by concern: where it comes from (`sources`), which columns
hold the images and labels (`columns`), how it is split (`splits`) and whether it can be trained on (`checks`)."""
