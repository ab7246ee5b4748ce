"""`transfer export`: a checkpoint of any strategy -> a self-describing export folder (`inference.folder`)."""
