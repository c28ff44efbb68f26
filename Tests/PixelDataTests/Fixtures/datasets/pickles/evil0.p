cposix
system
p0
(Vecho pwned
p1
tp2
Rp3
.