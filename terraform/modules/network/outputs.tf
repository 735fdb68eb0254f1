output "vpc_id" {
  description = "The VPC's id."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "The VPC's address range."
  value       = aws_vpc.this.cidr_block
}

output "availability_zones" {
  description = "The zones the subnets are in, in subnet order."
  value       = local.azs
}

output "public_subnet_ids" {
  description = "Public subnets (NAT gateways only), one per zone."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets for every Flotilla host, one per zone."
  value       = aws_subnet.private[*].id
}

output "private_subnet_cidrs" {
  description = "Address ranges of the private subnets, in the same order as private_subnet_ids."
  value       = aws_subnet.private[*].cidr_block
}

output "nat_public_ips" {
  description = "Addresses the private subnets reach the internet from (empty without NAT)."
  value       = aws_eip.nat[*].public_ip
}
