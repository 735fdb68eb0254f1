output "instance_ids" {
  description = "Coordinator host instance ids."
  value       = aws_instance.coordinator[*].id
}

output "names" {
  description = "Coordinator host names (Name tags), in the same order."
  value       = [for host in local.hosts : host.name]
}

output "private_ips" {
  description = "Fixed private addresses of the coordinator hosts."
  value       = aws_instance.coordinator[*].private_ip
}
