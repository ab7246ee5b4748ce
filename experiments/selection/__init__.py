"""`transfer select`: rank candidate pretrained models on the user's data by transferability scores."""
