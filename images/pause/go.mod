module hanfs.local/pause

go 1.26
